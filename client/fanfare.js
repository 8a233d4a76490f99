// fanfare's browser client, served by fanfare at /_fanfare/client.js (ES module) and
// /_fanfare/client.umd.js (window.fanfare). No dependencies, no build step.
//
//   const rt = fanfare.connect("/chat/lobby", { token });
//   rt.on("said", (data, meta) => ...);   // meta: { id, event, subject }
//   rt.on("connect", ({ transport }) => ...);
//   await rt.publish("chat.lobby", { text: "hi" }, { event: "said" });
//
// Transports, best first: WebSocket, Server-Sent Events, long-polling (XHR, or fetch
// where there is no XHR). One that fails before it opens hands over to the next; the
// one that worked is remembered for the origin (sessionStorage). A connection that
// drops comes back after a full-jitter exponential backoff (first retry 0.5-1 s, cap
// 30 s), or after the server's own retry hint when it drains, and resumes from the
// last cursor it saw, so nothing is lost or repeated.

const LADDER = ["ws", "sse", "poll"];
const KEY = "fanfare.transport";
const has = (name) => typeof globalThis[name] === "function";
const usable = {
  ws: () => has("WebSocket"),
  sse: () => has("EventSource"),
  poll: () => has("XMLHttpRequest") || has("fetch"),
};
const store = (value) => {
  try {
    const s = globalThis.sessionStorage;
    if (value) s.setItem(KEY, value);
    return s.getItem(KEY);
  } catch (e) {
    return null;
  }
};
// A payload is JSON when it parses as JSON, else the text itself (as the WebSocket
// protocol's `data` is).
const parse = (text) => {
  try {
    return JSON.parse(text);
  } catch (e) {
    return text;
  }
};
const fail = (code, reason, extra) =>
  Object.assign(new Error(reason || code), { code }, extra);

// Full jitter: a uniform delay in [base/2, base], base doubling from 1 s up to 30 s.
export function backoff(attempt) {
  const base = Math.min(30000, 1000 * 2 ** Math.min(attempt, 5));
  return base / 2 + Math.random() * (base / 2);
}

export function connect(path, options) {
  return new Realtime(path, options || {});
}

class Realtime {
  constructor(path, o) {
    const here = globalThis.location && globalThis.location.href;
    this.url = new URL(path, o.base || here);
    this.o = o;
    this.cursor = o.cursor || null;
    this.handlers = {};
    this.pending = {};
    this.queued = [];
    this.ref = 0;
    this.attempt = 0;
    this.ladder = (o.transports || LADDER).filter((t) => usable[t] && usable[t]());
    const saved = this.ladder.indexOf(store());
    this.i = saved < 0 ? 0 : saved;
    this.tried = 0;
    this.closed = false;
    this.transport = null;
    this.timer = setTimeout(() => this.open(), 0);
  }

  on(name, fn) {
    (this.handlers[name] = this.handlers[name] || []).push(fn);
    if (this.es) this.listen(name);
    return this;
  }

  off(name, fn) {
    this.handlers[name] = (this.handlers[name] || []).filter((h) => h !== fn);
    return this;
  }

  emit(name, ...args) {
    for (const h of (this.handlers[name] || []).slice()) {
      try {
        h.apply(this, args);
      } catch (e) {
        setTimeout(() => {
          throw e;
        });
      }
    }
  }

  // Publishes over the WebSocket (the only transport that carries client messages);
  // resolves on the server's ack.
  publish(subject, data, opts) {
    return this.request({ type: "publish", subject, data, event: opts && opts.event });
  }

  // Sends `data` to the route's app.message callback; resolves with the app's answer.
  rpc(data, opts) {
    return this.request({ type: "rpc", data, event: opts && opts.event }).then(
      (m) => m.data,
    );
  }

  request(msg) {
    if (this.closed) return Promise.reject(fail("closed", "the connection is closed"));
    msg.ref = ++this.ref;
    return new Promise((resolve, reject) => {
      this.pending[msg.ref] = { resolve, reject };
      if (this.sock && this.live) this.sock.send(JSON.stringify(msg));
      else this.queued.push(msg);
      this.refuse();
    });
  }

  // Requests cannot go over SSE or long-polling: they are refused, not held forever.
  refuse() {
    if (this.live && this.transport !== "ws") {
      const why = "publish and rpc need the WebSocket transport; this connection is ";
      this.settle(fail("needs_websocket", why + this.transport), true);
    }
  }

  // Rejects the requests sent and not answered; with `all`, the queued ones too.
  settle(err, all) {
    const queued = this.queued.map((m) => m.ref);
    if (all) this.queued = [];
    for (const ref in this.pending) {
      if (!all && queued.includes(+ref)) continue;
      this.pending[ref].reject(err);
      delete this.pending[ref];
    }
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    const was = this.live;
    this.stop();
    this.settle(fail("closed", "the connection is closed"), true);
    if (was) this.emit("disconnect", { reason: "closed", willReconnect: false });
  }

  async open() {
    if (this.closed) return;
    const t = this.ladder[this.i];
    if (!t) return this.emit("error", fail("no_transport", "no usable transport"));
    let token = this.o.token;
    if (typeof token === "function") {
      try {
        token = await token();
      } catch (e) {
        token = null;
      }
      if (this.closed) return;
    }
    const url = new URL(this.url.href);
    if (token) url.searchParams.set("access_token", token);
    if (t === "poll") url.searchParams.set("transport", "poll");
    if (this.cursor) url.searchParams.set(t === "poll" ? "cursor" : "last_event_id", this.cursor);
    this.transport = t;
    this.live = false;
    this.gen = (this.gen || 0) + 1;
    this.timer = setTimeout(() => this.down("open_timeout"), this.o.openTimeout || 5000);
    this[t](url, this.gen);
  }

  up() {
    if (this.live) return;
    clearTimeout(this.timer);
    this.live = true;
    this.attempt = 0;
    this.tried = 0;
    store(this.transport);
    this.emit("connect", { transport: this.transport, resumed: !!this.cursor });
    if (this.transport === "ws") {
      for (const m of this.queued.splice(0)) this.sock.send(JSON.stringify(m));
    } else this.refuse();
  }

  stop() {
    this.gen = (this.gen || 0) + 1;
    const { sock: ws, es, xhr } = this;
    this.sock = this.es = this.xhr = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close();
      } catch (e) {}
    }
    if (es) es.close();
    if (xhr) xhr.abort();
  }

  // The transport ended. `retry`: the server's hint (ms); `final`: do not reconnect.
  down(reason, retry, final) {
    if (this.closed) return;
    clearTimeout(this.timer);
    const was = this.live;
    this.live = false;
    this.stop();
    this.settle(fail("disconnected", "the connection dropped: " + reason));
    if (final) {
      this.closed = true;
      if (was) this.emit("disconnect", { reason, willReconnect: false });
      return;
    }
    let delay;
    if (!was) {
      // Never opened: the next transport at once; after a whole round, back off.
      this.i = (this.i + 1) % this.ladder.length;
      if (++this.tried < this.ladder.length) {
        this.timer = setTimeout(() => this.open(), 0);
        return;
      }
      this.tried = 0;
      this.emit("error", fail("unreachable", "no transport could connect: " + reason));
    } else this.emit("disconnect", { reason, willReconnect: true });
    delay = retry != null ? retry : backoff(this.attempt++);
    this.timer = setTimeout(() => this.open(), delay);
  }

  deliver(event, id, data, subject) {
    if (id) this.cursor = id;
    this.emit(event || "message", data, { id: id || null, event: event || "message", subject });
  }

  message(m) {
    let data = m.data;
    if (m.encoding === "base64") data = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    this.deliver(m.event, m.id, data, m.subject);
  }

  ws(url, gen) {
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const ws = (this.sock = new WebSocket(url.href));
    ws.onopen = () => this.up();
    ws.onmessage = (e) => {
      const m = parse(e.data);
      const p = m && m.ref != null && this.pending[m.ref];
      if (m.type === "message") this.message(m);
      else if (m.type === "reset") this.emit("reset", { reason: m.reason, dropped: m.dropped });
      else if (p) {
        delete this.pending[m.ref];
        if (m.type === "error") p.reject(fail(m.code, m.reason, { status: m.status, data: m.data }));
        else p.resolve(m);
      } else if (m.type === "error") this.emit("error", fail(m.code, m.reason));
    };
    ws.onclose = (e) => {
      if (gen !== this.gen) return;
      // 4001: the token expired (a token function gives a fresh one at once);
      // 4005: the app closed this connection; 1012: fanfare restarts; 4004: a reload
      // changed the route.
      if (e.code === 4001) return this.down("token_expired", typeof this.o.token === "function" ? 0 : null);
      if (e.code === 4005) return this.down("closed_by_app", null, true);
      this.down(e.code === 1012 ? "restart" : e.code === 4004 ? "route_changed" : "closed " + e.code);
    };
  }

  listen(name) {
    const es = this.es;
    if (!es || es.seen[name]) return;
    es.seen[name] = 1;
    es.addEventListener(name, (e) => this.deliver(name, e.lastEventId, parse(e.data)));
  }

  sse(url, gen) {
    const es = (this.es = new EventSource(url.href));
    es.seen = { message: 1, connect: 1, disconnect: 1, error: 1, reset: 1 };
    for (const name in this.handlers) this.listen(name);
    es.onopen = () => this.up();
    es.onmessage = (e) => this.deliver("message", e.lastEventId, parse(e.data));
    const on = (name, fn) => es.addEventListener(name, (e) => fn(parse(e.data) || {}));
    on("fanfare.reset", (d) => this.emit("reset", d));
    on("fanfare.drain", (d) => this.down("restart", d.retry));
    on("fanfare.route_changed", (d) => this.down("route_changed", d.retry));
    on("fanfare.expired", () => this.down("token_expired", typeof this.o.token === "function" ? 0 : null));
    on("fanfare.closed", (d) => this.down("closed_by_app: " + (d.reason || ""), null, true));
    // EventSource would reconnect by itself, without backoff and without our cursor
    // on another transport: it is closed and the client reconnects instead.
    es.onerror = () => gen === this.gen && this.down("sse_error");
  }

  poll(url, gen) {
    const held = setTimeout(() => gen === this.gen && this.up(), 1000);
    const done = (status, text) => {
      clearTimeout(held);
      if (gen !== this.gen) return;
      const body = status === 200 && parse(text);
      if (!body || !Array.isArray(body.messages)) {
        if (status >= 400) this.emit("error", fail("refused", "HTTP " + status, { status, data: parse(text) }));
        return this.down(status ? "http " + status : "poll_error");
      }
      this.up();
      if (body.reset) this.emit("reset", { reason: body.reset });
      for (const m of body.messages) if (gen === this.gen) this.message(m);
      if (gen !== this.gen) return;
      this.cursor = body.cursor || this.cursor;
      url.searchParams.set("cursor", this.cursor);
      this.poll(url, gen);
    };
    if (has("XMLHttpRequest")) {
      const x = (this.xhr = new XMLHttpRequest());
      x.open("GET", url.href);
      x.onload = () => done(x.status, x.responseText);
      x.onerror = () => done(0, "");
      x.send();
    } else {
      fetch(url.href).then((r) => r.text().then((t) => done(r.status, t)), () => done(0, ""));
    }
  }
}

export default { connect, backoff };
