// Board pages: sort a table by a header's button (mouse or keyboard; entries without a value stay last in both
// directions, aria-sort says which way), filter a sequence's entries by method, PET, tier and free text with a live
// count, and show or hide the detail columns. A local file with no dependencies that fetches nothing, so the page
// works from file://. Record text is only ever read from data- attributes and written with textContent.
(function () {
  "use strict";

  function sortBy(table, th, col) {
    var asc = !th.classList.contains("sorted-asc");
    table.querySelectorAll("th").forEach(function (h) {
      h.classList.remove("sorted-asc", "sorted-desc");
      h.removeAttribute("aria-sort");
    });
    th.classList.add(asc ? "sorted-asc" : "sorted-desc");
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var numeric = th.dataset.type === "num";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var keys = new Map();
    rows.forEach(function (row) {
      var cell = row.cells[col];
      var v = null;
      if (!numeric) {
        v = cell.textContent.trim().toLowerCase();
      } else {
        v = parseFloat(cell.dataset.v);
        if (isNaN(v)) { v = null; }
      }
      keys.set(row, v);
    });
    rows.sort(function (a, b) {
      var u = keys.get(a), v = keys.get(b);
      if (u === null || v === null) { return (u === null) - (v === null); }
      return (u < v ? -1 : u > v ? 1 : 0) * (asc ? 1 : -1);
    });
    var frag = document.createDocumentFragment();
    rows.forEach(function (r) { frag.appendChild(r); });
    body.appendChild(frag);
  }

  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th").forEach(function (th, col) {
      var button = th.querySelector("button.sort");
      if (!button) { return; }
      // a native button: Enter and Space activate it, and it is in the tab order
      button.addEventListener("click", function () { sortBy(table, th, col); });
    });
  });

  document.querySelectorAll("form.board-filter").forEach(function (form) {
    var scope = form.closest("section.runs") || document;
    var rows = Array.prototype.slice.call(scope.querySelectorAll("tbody tr[data-method]"));
    var count = form.querySelector(".filter-count");
    var search = rows.map(function (r) { return r.dataset.search || ""; });
    function apply() {
      var method = form.elements.method.value;
      var pet = form.elements.pet.value;
      var tier = form.elements.tier.value;
      var words = form.elements.q.value.toLowerCase().split(/\s+/).filter(Boolean);
      var shown = 0;
      rows.forEach(function (row, i) {
        var ok = (!method || row.dataset.method === method) && (!pet || row.dataset.pet === pet) &&
          (!tier || row.dataset.tier === tier) &&
          words.every(function (w) { return search[i].indexOf(w) >= 0; });
        if (row.hidden === ok) { row.hidden = !ok; }
        if (ok) { shown += 1; }
      });
      count.textContent = shown + " of " + rows.length + " entries shown";
    }
    form.addEventListener("input", apply);
    form.addEventListener("change", apply);
    form.addEventListener("submit", function (event) { event.preventDefault(); apply(); });
    apply();
  });

  document.querySelectorAll("button.toggle-details").forEach(function (button) {
    var scope = button.closest("section.runs") || document;
    button.addEventListener("click", function () {
      var open = button.getAttribute("aria-expanded") !== "true";
      scope.querySelectorAll("table.sortable").forEach(function (t) { t.classList.toggle("show-details", open); });
      button.setAttribute("aria-expanded", open ? "true" : "false");
      button.textContent = open ? "Show fewer columns" : "Show all columns";
    });
  });
})();
