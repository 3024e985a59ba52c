// Sort a table by a clicked header; numeric columns use each cell's data-v value. No dependencies.
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = !th.classList.contains("sorted-asc");
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
      th.classList.add(asc ? "sorted-asc" : "sorted-desc");
      var numeric = th.dataset.type === "num";
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col], y = b.cells[col];
        var u = numeric ? parseFloat(x.dataset.v) : x.textContent.trim();
        var v = numeric ? parseFloat(y.dataset.v) : y.textContent.trim();
        if (numeric) { u = isNaN(u) ? -Infinity : u; v = isNaN(v) ? -Infinity : v; }
        return (u < v ? -1 : u > v ? 1 : 0) * (asc ? 1 : -1);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
