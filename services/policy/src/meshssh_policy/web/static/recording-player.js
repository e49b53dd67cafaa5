// meshssh dashboard: play the recording of this page with the vendored asciinema-player
// (asciinema-player-3.18.0.min.js, Apache-2.0, LICENSE in asciinema-player-LICENSE.txt).
// The cast comes from the dashboard (same origin, the session cookie), so fetch needs nothing.
document.addEventListener("DOMContentLoaded", function () {
  var box = document.getElementById("player");
  if (!box || !window.AsciinemaPlayer) { return; }
  window.AsciinemaPlayer.create(box.dataset.cast, box, {
    cols: parseInt(box.dataset.cols, 10) || 80,
    rows: parseInt(box.dataset.rows, 10) || 24,
    fit: "width",
    preload: true,
    idleTimeLimit: 2,
    controls: true
  });
});
