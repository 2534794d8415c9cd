// The board's tables sort by any column and, with its figures, follow the filter bar: rows and
// sections carry data-task, data-size and data-regularizer; a figure's traces carry their
// regularizer as legendgroup.
"use strict";

(function () {
  function sortKey(cell, numeric) {
    const raw = cell.dataset.sort;
    if (raw === "") return null;  // no value: always last
    return numeric ? parseFloat(raw) : raw.toLowerCase();
  }

  function sortBy(table, column, header) {
    const ascending = header.getAttribute("aria-sort") !== "ascending";
    const numeric = header.dataset.numeric === "1";
    const body = table.tBodies[0];
    const rows = Array.from(body.rows).map((row, index) => ({
      row, index, key: sortKey(row.cells[column], numeric)}));
    rows.sort((a, b) => {
      if (a.key === null || b.key === null) {
        return (a.key === null) - (b.key === null) || a.index - b.index;
      }
      const order = numeric ? a.key - b.key : a.key.localeCompare(b.key);
      return (ascending ? order : -order) || a.index - b.index;
    });
    rows.forEach((r) => body.appendChild(r.row));
    table.querySelectorAll("th").forEach((th) => th.removeAttribute("aria-sort"));
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }

  document.querySelectorAll("table.sortable").forEach((table) => {
    table.querySelectorAll("thead th").forEach((header, column) => {
      header.querySelector("button").addEventListener(
        "click", () => sortBy(table, column, header));
    });
  });

  const form = document.getElementById("filters");
  if (!form) return;

  function chosen() {
    const regularizers = new Set(
      Array.from(form.querySelectorAll("input[name=regularizer]:checked"), (box) => box.value));
    return {task: form.elements.task.value, size: form.elements.size.value, regularizers};
  }

  function shows(element, filter) {
    const data = element.dataset;
    return (!filter.task || data.task === undefined || data.task === filter.task)
      && (!filter.size || data.size === undefined || data.size === filter.size)
      && (data.regularizer === undefined || filter.regularizers.has(data.regularizer));
  }

  function apply() {
    const filter = chosen();
    document.querySelectorAll("tbody tr, section[data-task]").forEach((element) => {
      element.hidden = !shows(element, filter);
    });
    document.querySelectorAll("[data-count-for]").forEach((note) => {
      const rows = document.getElementById(note.dataset.countFor).tBodies[0].rows;
      const shown = Array.from(rows).filter((row) => !row.hidden).length;
      note.textContent = shown === rows.length ? `${rows.length} rows`
        : `${shown} of ${rows.length} rows shown (filtered)`;
    });
    const total = form.querySelectorAll("input[name=regularizer]").length;
    form.querySelector(".chosen").textContent = `(${filter.regularizers.size}/${total})`;
    document.querySelectorAll(".js-plotly-plot").forEach((plot) => {
      // A figure hidden with its task has no size to draw in: it is redrawn once shown.
      if (plot.offsetParent === null) {
        plot.dataset.pending = "1";
        return;
      }
      const visible = plot.data.map((trace) => !trace.legendgroup
        || trace.legendgroup.startsWith("status-") || filter.regularizers.has(trace.legendgroup));
      window.Plotly.restyle(plot, {visible});
      if (plot.dataset.pending) {
        delete plot.dataset.pending;
        window.Plotly.Plots.resize(plot);
      }
    });
  }

  form.addEventListener("change", apply);
  form.addEventListener("reset", () => setTimeout(apply));
  form.querySelectorAll("button[data-all]").forEach((button) => {
    button.addEventListener("click", () => {
      form.querySelectorAll("input[name=regularizer]").forEach((box) => {
        box.checked = button.dataset.all === "1";
      });
      apply();
    });
  });
  apply();
})();
