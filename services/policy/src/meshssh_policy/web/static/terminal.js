// meshssh browser terminal (terminal.html): xterm.js over a WebSocket to meshssh-gateway.
// Protocol (docs/browser-terminal.md): binary frames carry terminal bytes both ways; text frames
// are JSON: to the gateway {"type":"resize","cols":C,"rows":R}; from it {"type":"exit",
// "status":N,"message":"..."} or {"type":"error","message":"..."}, then the socket closes.
(function () {
  "use strict";
  var box = document.getElementById("terminal");
  var status = document.getElementById("term-status");
  var banner = document.getElementById("term-ended");
  if (!box || typeof Terminal === "undefined" || typeof FitAddon === "undefined") { return; }

  var term = new Terminal({
    cursorBlink: true,
    scrollback: 5000,
    fontFamily: "ui-monospace, SFMono-Regular, Menlo, monospace",
    fontSize: 15
  });
  var fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  window.meshsshTerminal = term; // for tests and the console: the screen's buffer

  var encoder = new TextEncoder();
  var url = new URL(box.dataset.ws);
  url.searchParams.set("cols", String(term.cols));
  url.searchParams.set("rows", String(term.rows));
  var ws = new WebSocket(url.toString());
  ws.binaryType = "arraybuffer";
  var ended = false;

  function setStatus(text, state) {
    status.textContent = text;
    status.dataset.state = state;
  }

  function end(text) {
    if (ended) { return; }
    ended = true;
    setStatus("Ended", "ended");
    banner.textContent = text;
    banner.hidden = false;
    term.write("\r\n\x1b[1;31m[" + text.replace(/[\x00-\x1f\x7f]/g, " ") + "]\x1b[0m\r\n");
    term.options.disableStdin = true;
    term.options.cursorBlink = false;
  }

  function send(data) {
    if (!ended && ws.readyState === WebSocket.OPEN) { ws.send(data); }
  }

  function sendSize() {
    send(JSON.stringify({ type: "resize", cols: term.cols, rows: term.rows }));
  }

  ws.onopen = function () {
    setStatus("Connected", "connected");
    sendSize();
    term.focus();
  };
  ws.onmessage = function (event) {
    if (typeof event.data !== "string") {
      term.write(new Uint8Array(event.data));
      return;
    }
    var msg;
    try { msg = JSON.parse(event.data); } catch (e) { return; }
    if (msg.type === "exit") {
      var text = "Session ended, exit status " + msg.status;
      end(msg.message ? text + ": " + msg.message : text);
    } else if (msg.type === "error") {
      end(msg.message || "the gateway refused the terminal");
    }
  };
  ws.onclose = function (event) {
    end(event.reason || "Connection closed (WebSocket code " + event.code + ")");
  };

  term.onData(function (data) { send(encoder.encode(data)); }); // keys and pastes
  term.onBinary(function (data) {
    var bytes = new Uint8Array(data.length);
    for (var i = 0; i < data.length; i++) { bytes[i] = data.charCodeAt(i) & 255; }
    send(bytes);
  });
  term.onResize(sendSize);
  var pending = 0;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(function () { fit.fit(); }, 50);
  });

  // Copy: the selection is copied when made, and by the Copy button or Ctrl+Shift+C.
  function copy() {
    var text = term.getSelection();
    if (text && navigator.clipboard) { navigator.clipboard.writeText(text).catch(function () {}); }
    return !!text;
  }
  function paste() {
    if (!navigator.clipboard || !navigator.clipboard.readText) { return; }
    navigator.clipboard.readText().then(function (text) { if (text) { term.paste(text); } })
      .catch(function () {});
  }
  term.onSelectionChange(function () { if (term.hasSelection()) { copy(); } });
  term.attachCustomKeyEventHandler(function (event) {
    if (event.type === "keydown" && event.ctrlKey && event.shiftKey && event.code === "KeyC") {
      event.preventDefault(); // not the browser's inspector
      copy();
      return false;
    }
    return true; // Ctrl+Shift+V and Ctrl+V reach the browser's own paste
  });
  document.getElementById("term-copy").addEventListener("click", function () {
    copy();
    term.focus();
  });
  document.getElementById("term-paste").addEventListener("click", function () {
    paste();
    term.focus();
  });
  document.getElementById("term-close").addEventListener("click", function () {
    end("Disconnected");
    ws.close(1000, "closed by the user");
  });
})();
