// The Node socket.io server (4.x) as a fan-out peer for bench/socketio.sh: it
// subscribes to a NATS subject and io.emit()s every message to every socket, the
// usual way a Socket.IO app fans out an external feed.
//   node socketio-server.js PORT NATS_URL SUBJECT   (NODE_PATH: socket.io and nats)
const { Server } = require("socket.io");
const { connect } = require("nats");
const [port, natsUrl, subject] = process.argv.slice(2);
const io = new Server(Number(port), { transports: ["websocket"], pingInterval: 300000, pingTimeout: 60000 });
(async () => {
  const nc = await connect({ servers: natsUrl });
  for await (const m of nc.subscribe(subject)) {
    io.emit("message", JSON.parse(Buffer.from(m.data).toString()));
  }
})();
