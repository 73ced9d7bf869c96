// The side panels. On a phone "Rooms & people" opens over the chat as a modal dialog:
// focus moves into it, everything behind it is inert, and Escape, its Close button or a tap
// outside close it and give focus back to the button that opened it. One function, setOpen,
// owns that state (the class, aria-expanded, the dialog role, inert, focus), so nothing can
// leave aria-expanded saying "open" over a closed panel. Each panel's heading is a button
// that shows or hides its body (a disclosure). chat.js closes the dialog through chatPanel.
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const side = $("side"), toggle = $("panels-toggle"), backdrop = $("backdrop");
  const phone = window.matchMedia("(max-width: 700px)");
  const behind = () => [$("topbar"), $("chat"), document.querySelector(".skip-link")];
  let open = false;

  function setOpen(wanted, returnFocus = true) {
    const modal = wanted && phone.matches;  // on a wide screen the panels are always there
    const wasOpen = open;
    open = modal;
    side.classList.toggle("open", modal);
    backdrop.classList.toggle("open", modal);
    toggle.setAttribute("aria-expanded", String(modal));
    side.setAttribute("role", modal ? "dialog" : "complementary");
    if (modal) side.setAttribute("aria-modal", "true");
    else side.removeAttribute("aria-modal");
    for (const node of behind()) if (node) node.inert = modal;
    if (modal && !wasOpen) $("side-title").focus();
    else if (!modal && wasOpen && returnFocus) toggle.focus();
  }

  toggle.addEventListener("click", () => setOpen(!open));
  $("panels-close").addEventListener("click", () => setOpen(false));
  backdrop.addEventListener("click", () => setOpen(false));
  // Tab goes round inside the open dialog (the page behind is inert, the browser's bar is not).
  const focusable = () => [...side.querySelectorAll("button, input, select, textarea, a[href], [tabindex='0']")]
    .filter((node) => !node.disabled && node.getClientRects().length);
  document.addEventListener("keydown", (event) => {
    if (!open) return;
    if (event.key === "Escape") {
      event.preventDefault();
      setOpen(false);
    } else if (event.key === "Tab") {
      const nodes = focusable();
      const first = nodes[0], last = nodes[nodes.length - 1];
      const at = document.activeElement;
      if (event.shiftKey ? at === first || at === $("side-title") : at === last || !side.contains(at)) {
        event.preventDefault();
        (event.shiftKey ? last : first).focus();
      }
    }
  });
  // Turned to a wide screen while open: the panels are a column again, nothing is inert.
  phone.addEventListener("change", () => { if (open && !phone.matches) setOpen(false, false); });

  for (const button of side.querySelectorAll(".panel-title button")) {
    button.addEventListener("click", () => {
      const shown = button.getAttribute("aria-expanded") !== "true";
      button.setAttribute("aria-expanded", String(shown));
      $(button.getAttribute("aria-controls")).hidden = !shown;
    });
  }

  window.chatPanel = {
    isOpen: () => open,
    close: (returnFocus = true) => setOpen(false, returnFocus),
  };
})();
