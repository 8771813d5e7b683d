// twintrack console: the little the pages need beyond htmx.
//
// The live log resumes by index. A browser's EventSource reconnects by itself with
// Last-Event-ID; when the SSE extension has to open a new EventSource (after the old one
// closed), it would start from the URL's index again, so we add `from_index` = the index
// after the last row shown, and drop any message at or below it: never a gap, never twice.
(function () {
  // Error answers carry a page or a message to show (404 "not found", 409, 403): swap them too.
  htmx.config.responseHandling = [
    { code: "204", swap: false },
    { code: "[2345]..", swap: true },
  ];
  function lastIndex() {
    var rows = document.querySelectorAll("#log tr[data-index]");
    return rows.length ? parseInt(rows[rows.length - 1].dataset.index, 10) : -1;
  }
  function state(text) {
    var el = document.getElementById("log-state");
    if (el) el.textContent = text;
  }
  htmx.createEventSource = function (url) {
    var last = lastIndex();
    if (last >= 0) {
      url = url.split("?")[0] + "?from_index=" + (last + 1);
    }
    return new EventSource(url, { withCredentials: true });
  };
  document.addEventListener("htmx:sseBeforeMessage", function (evt) {
    var e = evt.detail;
    if (e.type === "ev" && e.lastEventId !== "" && parseInt(e.lastEventId, 10) <= lastIndex()) {
      evt.preventDefault(); // already shown (a replay after a reconnect)
    }
  });
  document.addEventListener("htmx:sseOpen", function () { state("live"); });
  document.addEventListener("htmx:sseError", function () { state("reconnecting…"); });
  document.addEventListener("htmx:sseClose", function () {
    var el = document.getElementById("log-state");
    if (el && el.textContent.indexOf("ended") !== 0) state("ended");
  });
  document.addEventListener("htmx:sseMessage", function (evt) {
    if (evt.detail && evt.detail.type === "end") state("ended (" + evt.detail.data + ")");
  });
  window.ttSelectAll = function (box) {
    document.querySelectorAll('input[name="ids"]:not(:disabled)').forEach(function (b) { b.checked = box.checked; });
  };
})();
