// Node ws: echo, or broadcast to every client.  bench/run passes
// --port P --mode echo|broadcast --deflate on|off.
'use strict';
const { WebSocketServer, WebSocket } = require('ws');

const args = { port: 0, mode: 'echo', deflate: 'off' };
for (let i = 2; i < process.argv.length; i += 2) {
  args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
}

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port: Number(args.port),
  perMessageDeflate: args.deflate === 'on',
  maxPayload: 64 * 1024 * 1024,
  clientTracking: args.mode === 'broadcast',
});

wss.on('connection', (ws) => {
  if (args.mode === 'echo') {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  } else {
    ws.on('message', (data, isBinary) => {
      for (const client of wss.clients) {
        if (client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
      }
    });
  }
});

process.on('SIGTERM', () => process.exit(0));
