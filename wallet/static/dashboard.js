// The co-wallet dashboard's only script of its own: draw the spend chart whenever htmx swaps
// its fragment in (the data rides in the canvas's data-chart attribute: no inline script, CSP).
"use strict";

(function () {
  let chart = null;

  function drawSpend() {
    const canvas = document.getElementById("spend-chart");
    if (!canvas || typeof Chart === "undefined") {
      return;
    }
    const data = JSON.parse(canvas.dataset.chart);
    if (chart) {
      chart.destroy();
    }
    chart = new Chart(canvas, {
      type: "bar",
      data: {
        labels: data.labels,
        datasets: [{ label: "USD spent", data: data.values, backgroundColor: "#3b6ea5" }],
      },
      options: {
        indexAxis: "y",
        animation: false,
        plugins: { legend: { display: false } },
        scales: { x: { beginAtZero: true, title: { display: true, text: "USD" } } },
      },
    });
  }

  document.addEventListener("htmx:afterSettle", function (event) {
    if (event.target.id === "spend") {
      drawSpend();
    }
  });
  // The page is live while its event stream is open: say so, and say when it drops.
  document.addEventListener("htmx:sseOpen", function () {
    document.getElementById("live").className = "live on";
  });
  document.addEventListener("htmx:sseError", function () {
    document.getElementById("live").className = "live off";
  });
})();
