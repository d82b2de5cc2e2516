// Opie's only page script: keyboard sending, form resets, scrolling, upload progress and
// readable errors around htmx. It never inserts HTML: the server renders every fragment.
(function () {
  "use strict";

  function flash(text) {
    var box = document.getElementById("flash");
    if (!box) return;
    var list = document.createElement("ul");
    var item = document.createElement("li");
    list.className = "flash";
    item.className = "error";
    item.textContent = text;
    list.appendChild(item);
    box.replaceChildren(list);
  }

  function nearBottom(log) {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 160;
  }

  // Enter sends, Shift+Enter makes a new line (and composing an IME character is left alone).
  document.addEventListener("keydown", function (event) {
    var field = event.target;
    if (!(field instanceof HTMLTextAreaElement) || !field.hasAttribute("data-enter-submits")) return;
    if (event.key !== "Enter" || event.shiftKey || event.isComposing) return;
    event.preventDefault();
    if (field.value.trim() && field.form) field.form.requestSubmit();
  });

  document.addEventListener("htmx:beforeRequest", function (event) {
    var form = event.detail.elt;
    if (!(form instanceof HTMLFormElement)) return;
    form.querySelectorAll(".upload-errors").forEach(function (box) { box.replaceChildren(); });
  });

  document.addEventListener("htmx:afterRequest", function (event) {
    var form = event.detail.elt;
    if (!(form instanceof HTMLFormElement)) return;
    var bar = form.querySelector("progress.transfer");
    if (bar) bar.hidden = true;
    if (!event.detail.successful) return;
    if (form.hasAttribute("data-reset-on-success") || form.hasAttribute("data-upload")) {
      // Keep the session id: it is what makes the next message continue this session.
      var session = form.querySelector("#session-id");
      var keep = session ? session.value : null;
      form.reset();
      if (session) session.value = keep;
      var text = form.querySelector("textarea[data-enter-submits]");
      if (text) text.focus();
    }
  });

  document.addEventListener("htmx:xhr:progress", function (event) {
    var form = event.detail.elt;
    var bar = form && form.querySelector ? form.querySelector("progress.transfer") : null;
    if (!bar || !event.detail.lengthComputable) return;
    bar.hidden = false;
    bar.value = Math.round((100 * event.detail.loaded) / event.detail.total);
  });

  // Follow a streaming answer only while the reader is at the bottom of the conversation.
  document.addEventListener("htmx:sseBeforeMessage", function (event) {
    var log = event.target.closest("[data-autoscroll]");
    if (log) log.dataset.follow = nearBottom(log) ? "1" : "";
  });
  document.addEventListener("htmx:sseMessage", function (event) {
    var log = event.target.closest("[data-autoscroll]");
    if (log && log.dataset.follow) log.scrollTop = log.scrollHeight;
  });
  document.addEventListener("htmx:afterSwap", function (event) {
    var log = event.target;
    if (log instanceof Element && log.hasAttribute("data-autoscroll")) log.scrollTop = log.scrollHeight;
  });

  document.addEventListener("htmx:responseError", function (event) {
    var status = event.detail.xhr.status;
    if (status === 403) {
      flash("The page has expired (status 403). Reload it and try again.");
    } else if (status === 413) {
      flash("That upload is too large for the server.");
    } else {
      flash("The server could not complete that (status " + status + "). Try again in a moment.");
    }
  });
  document.addEventListener("htmx:sendError", function () {
    flash("The server cannot be reached. Check your connection and try again.");
  });

  window.addEventListener("load", function () {
    document.querySelectorAll("[data-autoscroll]").forEach(function (log) {
      log.scrollTop = log.scrollHeight;
    });
  });
})();
