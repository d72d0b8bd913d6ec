// lakelens review: draws the plots from the JSON the page carries (no inline scripts, no CDN).
"use strict";

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

function drawPlots() {
  if (typeof Plotly === "undefined") return;
  document.querySelectorAll("[data-figure]").forEach((el) => {
    const source = document.getElementById(el.dataset.figure);
    if (!source) return;
    const figure = JSON.parse(source.textContent);
    Plotly.newPlot(el, figure.data, figure.layout, {displayModeBar: false, responsive: true})
      .then(() => { el.dataset.rendered = "1"; });
    if (el.dataset.linkClusters) {
      el.on("plotly_click", (event) => {
        const key = event.points && event.points[0] && event.points[0].customdata;
        if (typeof key === "string" && /^ck-[0-9a-f]{6,40}$/.test(key)) {
          window.location.assign("/clusters/" + key);
        }
      });
    }
  });
}

window.lakelens = {csrfToken};
document.addEventListener("DOMContentLoaded", drawPlots);
