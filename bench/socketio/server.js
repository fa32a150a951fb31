// The Socket.IO 4 side of scripts/bench-broadcast.sh (docs/benchmarks.md, "Edge gateway").
// Every connection joins one room; `POST /publish` with a JSON body broadcasts it to the room
// as the event "push" (`io.to(room).emit`), like `POST /v1/publish` on the Pitboss gateway.
// WebSocket transport only; otherwise Socket.IO's defaults (no per-message deflate in v4).
"use strict";
const http = require("http");
const { Server } = require("socket.io");

const port = Number(process.env.PORT || 3000);
const host = process.env.HOST || "127.0.0.1";
const room = process.env.ROOM || "bench";

const httpServer = http.createServer((req, res) => {
  if (req.method === "POST" && req.url === "/publish") {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      let message;
      try {
        message = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch (e) {
        res.writeHead(400, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: String(e) }));
        return;
      }
      io.to(room).emit("push", message);
      res.writeHead(202, { "content-type": "application/json" });
      res.end('{"ok":true}');
    });
    return;
  }
  if (req.method === "GET" && req.url === "/healthz") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ connections: io.engine.clientsCount }));
    return;
  }
  res.writeHead(404);
  res.end();
});

const io = new Server(httpServer, { transports: ["websocket"] });
io.on("connection", (socket) => socket.join(room));

httpServer.listen(port, host, () => {
  console.log(`socket.io ${require("socket.io/package.json").version} on http://${host}:${port} (room ${room}, pid ${process.pid})`);
});
process.on("SIGTERM", () => process.exit(0));
