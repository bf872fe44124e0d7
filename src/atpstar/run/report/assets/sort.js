// Sortable tables: click a header to sort by that column (again: reverse). Numbers sort numerically,
// empty cells last. "#sort=COLUMN" or "#sort=-COLUMN" in the page address sorts on load.
(function () {
  function value(cell) {
    var text = cell.getAttribute("data-v");
    if (text === null) text = cell.textContent;
    var num = parseFloat(text);
    return isNaN(num) ? text.toLowerCase() : num;
  }
  function sortBy(table, index, descending) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a.cells[index]), y = value(b.cells[index]);
      var xe = x === "" || x === "nan", ye = y === "" || y === "nan";
      if (xe || ye) return xe === ye ? 0 : (xe ? 1 : -1);
      if (x < y) return descending ? 1 : -1;
      if (x > y) return descending ? -1 : 1;
      return 0;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      if (i === index) th.setAttribute("aria-sort", descending ? "descending" : "ascending");
      else th.removeAttribute("aria-sort");
    });
  }
  function setup(table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.addEventListener("click", function () {
        sortBy(table, i, th.getAttribute("aria-sort") === "ascending");
      });
    });
  }
  var tables = document.querySelectorAll("table.sortable");
  Array.prototype.forEach.call(tables, setup);
  var match = /sort=(-?)([\w*+.-]+)/.exec(window.location.hash);
  if (match) {
    Array.prototype.forEach.call(tables, function (table) {
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
        if (th.getAttribute("data-col") === match[2]) sortBy(table, i, match[1] === "-");
      });
    });
  }
})();
