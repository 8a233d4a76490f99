// A socket.io-client 4 session driven by tests/socketio.rs: prints what happens as
// JSON lines on stdout, and takes commands as JSON lines on stdin.
//   node sio-client.js '{"url":"http://127.0.0.1:8080","transports":["polling"]}'
// Commands: {"cmd":"emit","name":"x","args":[1],"ack":true}, {"cmd":"close"}.
const { io } = require(process.env.FANFARE_TEST_NODE_MODULES + "/socket.io-client");
const readline = require("readline");

const cfg = JSON.parse(process.argv[2]);
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const opts = { reconnection: cfg.reconnection ?? false, auth: cfg.auth };
if (cfg.transports) opts.transports = cfg.transports;
// A new TCP connection for every HTTP request (no keep-alive), so a connection-level
// balancer spreads a polling session's requests.
if (cfg.fresh_connections) {
  const http = require("http");
  http.globalAgent = new http.Agent({ keepAlive: false });
  opts.transportOptions = { polling: { extraHeaders: { connection: "close" } } };
}
const s = io(cfg.url + (cfg.nsp || ""), opts);

s.io.on("open", () => {
  out({ ev: "open", transport: s.io.engine.transport.name });
  s.io.engine.on("upgrade", (t) => out({ ev: "upgrade", transport: t.name }));
});
s.on("connect", () =>
  out({ ev: "connect", id: s.id, transport: s.io.engine.transport.name, recovered: s.recovered })
);
s.on("connect_error", (e) => out({ ev: "connect_error", message: e.message, data: e.data }));
s.on("disconnect", (reason) => out({ ev: "disconnect", reason }));
s.onAny((name, ...args) =>
  out({
    ev: "event",
    name,
    args: args.map((a) => (Buffer.isBuffer(a) ? { binary: [...a] } : a)),
  })
);

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const c = JSON.parse(line);
  if (c.cmd === "emit") {
    const args = c.args.map((a) => (a && a.binary ? Buffer.from(a.binary) : a));
    if (c.ack) {
      s.emit(c.name, ...args, (...res) => out({ ev: "ack", name: c.name, args: res }));
    } else {
      s.emit(c.name, ...args);
    }
  } else if (c.cmd === "close") {
    s.close();
    process.exit(0);
  }
});
