// meshssh dashboard: show refused requests (403, 401, 5xx) that htmx does not swap in.
document.addEventListener("htmx:responseError", function (event) {
  var box = document.getElementById("error");
  if (!box) { return; }
  var text = "Request failed (" + event.detail.xhr.status + ")";
  try {
    var body = JSON.parse(event.detail.xhr.responseText);
    if (body && body.error) { text = body.error; }
  } catch (e) { /* not JSON: keep the status */ }
  box.textContent = text;
  box.hidden = false;
});
document.addEventListener("htmx:beforeRequest", function () {
  var box = document.getElementById("error");
  if (box) { box.hidden = true; }
});
