// Board pages: sort a table by a clicked header (entries without a value stay last in both directions), and
// show or hide the detail columns. Local file, no dependencies, works from file://.
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = !th.classList.contains("sorted-asc");
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
      th.classList.add(asc ? "sorted-asc" : "sorted-desc");
      var numeric = th.dataset.type === "num";
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[col];
        if (!numeric) { return cell.textContent.trim(); }
        var v = parseFloat(cell.dataset.v);
        return isNaN(v) ? null : v;
      }
      rows.sort(function (a, b) {
        var u = key(a), v = key(b);
        if (u === null || v === null) { return (u === null) - (v === null); }
        return (u < v ? -1 : u > v ? 1 : 0) * (asc ? 1 : -1);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
document.querySelectorAll("button.toggle-details").forEach(function (button) {
  button.addEventListener("click", function () {
    var table = button.nextElementSibling;
    var open = table.classList.toggle("show-details");
    button.setAttribute("aria-expanded", open ? "true" : "false");
    button.textContent = open ? "Show fewer columns" : "Show all columns";
  });
});
