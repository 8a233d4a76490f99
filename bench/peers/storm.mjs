// Reconnect-storm driver for bench/storm.sh: N sessions against one fanfare route,
// printing "open <unix ms>" each time a session (re)connects.
// usage: node --experimental-websocket storm.mjs MODE BASE PATH N
//   MODE: eventsource  - the `eventsource` package, which reconnects as a browser's
//                        EventSource does (after the server's retry:, no backoff)
//         client-sse   - fanfare's own client (fetched from BASE/_fanfare/client.js)
//         client-ws      over SSE (on the eventsource package) or WebSocket (Node's)
import { createRequire } from "node:module";
import { writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const require = createRequire(process.env.NODE_PATH + "/");
const [mode, base, path, n] = process.argv.slice(2);
const EventSource = require("eventsource");
const out = (line) => process.stdout.write(line + "\n");

if (mode === "eventsource") {
  for (let i = 0; i < +n; i++) {
    const es = new EventSource(base + path);
    es.onopen = () => out("open " + Date.now());
  }
} else {
  globalThis.EventSource = EventSource;
  const code = await (await fetch(base + "/_fanfare/client.js")).text();
  const file = join(tmpdir(), "fanfare-client-" + process.pid + ".mjs");
  writeFileSync(file, code);
  const { connect } = await import(file);
  const transports = [mode === "client-ws" ? "ws" : "sse"];
  for (let i = 0; i < +n; i++) {
    connect(path, { base, transports }).on("connect", () => out("open " + Date.now()));
  }
}
