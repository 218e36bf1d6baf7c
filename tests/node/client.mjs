// A scripted Node `ws` client for wshub's integration tests.
//
//   node client.mjs <url> '<plan as JSON>'
//
// plan: {
//   protocolVersion?: 13 | 8,         // ws supports hybi-08 too
//   protocols?: ["name", ...],        // offered in Sec-WebSocket-Protocol
//   headers?: {name: value},          // extra request headers (e.g. Cookie)
//   send?: [{text: "...", repeat?: n} | {hex: "..."}],   // sent in order once open
//   sendAfter?: n,                    // ... or once n messages have arrived
//   expect?: n,                       // wait for n messages before closing
//   stayMs?: n,                       // then stay open this long (counting pings)
//   close?: [code, reason]            // then close (else wait for the server to)
// }
// Prints one JSON line: {opened, protocol, upgradeHeaders, messages: [{type, data|hex}],
// pings, close: {code, reason}, error}.
import WebSocket from "ws";

const [url, planText] = process.argv.slice(2);
const plan = JSON.parse(planText || "{}");
const result = { opened: false, upgradeHeaders: null, messages: [], pings: 0, close: null, error: null };

const ws = new WebSocket(url, plan.protocols || [], {
  protocolVersion: plan.protocolVersion || 13,
  headers: plan.headers || {},
  perMessageDeflate: plan.deflate || false,
});

const done = (() => {
  let finish;
  const p = new Promise((resolve) => { finish = resolve; });
  return { p, finish };
})();

let closing = false;
function maybeClose() {
  if (closing) return;
  if (result.messages.length >= (plan.expect || 0)) {
    closing = true;
    setTimeout(() => {
      if (plan.close) ws.close(plan.close[0], plan.close[1] || "");
    }, plan.stayMs || 0);
  }
}

ws.on("upgrade", (res) => { result.upgradeHeaders = res.headers; });
ws.on("unexpected-response", (_req, res) => {
  result.error = `unexpected response ${res.statusCode}`;
  result.status = res.statusCode;
  result.responseHeaders = res.headers;
  done.finish();
});
function sendAll() {
  for (const item of plan.send || []) {
    if (item.text !== undefined) ws.send(item.text.repeat(item.repeat || 1));
    else ws.send(Buffer.from(item.hex, "hex"));
  }
}

ws.on("open", () => {
  result.opened = true;
  result.protocol = ws.protocol;
  if (!plan.sendAfter) sendAll();
  maybeClose();
});
ws.on("ping", () => { result.pings += 1; });
ws.on("message", (data, isBinary) => {
  if (isBinary) result.messages.push({ type: "binary", hex: Buffer.from(data).toString("hex") });
  else result.messages.push({ type: "text", data: data.toString("utf8") });
  if (plan.sendAfter && result.messages.length === plan.sendAfter) sendAll();
  maybeClose();
});
ws.on("error", (err) => { result.error = String(err && err.message); });
ws.on("close", (code, reason) => {
  result.close = { code, reason: reason.toString("utf8") };
  done.finish();
});

await done.p;
console.log(JSON.stringify(result));
