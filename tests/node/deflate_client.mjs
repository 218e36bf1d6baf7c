// permessage-deflate interop: Node's ws client against a wshub echo server.
//
// usage: node deflate_client.mjs URL [perMessageDeflate JSON]
// Sends text, binary, a 1 MiB message and many small ones, checks every echo,
// and prints one JSON line: {extensions, ok, checked, errors, closeCode}.
import { WebSocket } from "ws";

const url = process.argv[2];
const pmd = process.argv[3] ? JSON.parse(process.argv[3]) : { threshold: 0 };

function bigText(n) {
  const parts = [];
  let i = 0;
  let len = 0;
  while (len < n) {
    const s = `{"seq":${i},"msg":"message number ${i} from node"}`;
    parts.push(s);
    len += s.length;
    i++;
  }
  return parts.join("").slice(0, n);
}

const messages = [
  "hello from node",
  "ünïcödé ✓ ".repeat(500),
  Buffer.from(Array.from({ length: 5000 }, (_, i) => (i * 31) & 0xff)),
  bigText(1 << 20),
  Buffer.alloc(1 << 20, 7),
];
for (let i = 0; i < 300; i++) messages.push(`small ${i} ${"x".repeat(i % 40)}`);

const result = { extensions: null, ok: false, checked: 0, errors: [] };
const ws = new WebSocket(url, { perMessageDeflate: pmd });
let next = 0;

const timer = setTimeout(() => {
  result.errors.push(`timeout after ${result.checked} echoes`);
  finish();
}, 25000);

function finish() {
  clearTimeout(timer);
  console.log(JSON.stringify(result));
  process.exit(0);
}

ws.on("upgrade", (res) => {
  result.extensions = res.headers["sec-websocket-extensions"] ?? null;
});
ws.on("open", () => {
  for (const m of messages) ws.send(m);
});
ws.on("message", (data, isBinary) => {
  const want = messages[next++];
  const wantBinary = Buffer.isBuffer(want);
  const same = wantBinary ? isBinary && Buffer.compare(data, want) === 0 : !isBinary && data.toString() === want;
  if (!same) result.errors.push(`message ${next - 1} came back different`);
  result.checked++;
  if (next === messages.length) {
    result.ok = result.errors.length === 0;
    ws.close(1000);
  }
});
ws.on("close", (code) => {
  result.closeCode = code;
  finish();
});
ws.on("error", (err) => {
  result.errors.push(String(err));
  finish();
});
