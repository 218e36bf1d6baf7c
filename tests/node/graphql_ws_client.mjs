// The graphql-ws npm client (over Node's ws) against examples/graphql_ws.py.
//
//   node graphql_ws_client.mjs <url> flow       // init, queries, subscriptions, ping, dispose
//   node graphql_ws_client.mjs <url> forbidden  // connection_init with a wrong token
//
// Prints one JSON line with what the client saw.
import WebSocket from "ws";
import { createClient } from "graphql-ws";

const [url, scenario] = process.argv.slice(2);
const COUNTDOWN = "subscription ($from: Int!) { countdown(from: $from) }";
const ECHO = "query ($text: String!) { echo(text: $text) }";

// Every result of one operation, and how it ended: "complete" or the error.
async function collect(client, payload, stopAfter = Infinity) {
  const results = [];
  try {
    for await (const result of client.iterate(payload)) {
      results.push(result);
      if (results.length >= stopAfter) return { results, end: "stopped by the client" };
    }
    return { results, end: "complete" };
  } catch (error) {
    const end = Array.isArray(error) ? { errors: error } : { code: error.code, reason: error.reason };
    return { results, end };
  }
}

function closedPromise() {
  let resolve;
  const promise = new Promise((r) => { resolve = r; });
  return { promise, resolve };
}

async function flow() {
  const out = {};
  const closed = closedPromise();
  const pong = closedPromise();
  const client = createClient({
    url,
    webSocketImpl: WebSocket,
    lazy: false,
    retryAttempts: 0,
    keepAlive: 20, // a ping 20 ms after the ack (and after every pong)
    connectionParams: { token: "alice-token" },
    on: {
      connected: (socket, payload) => { out.protocol = socket.protocol; out.ack = payload; },
      pong: (received, payload) => { if (received) pong.resolve(payload ?? null); },
      closed: (event) => closed.resolve({ code: event.code, reason: event.reason }),
    },
  });
  out.countdown = await collect(client, { query: COUNTDOWN, variables: { from: 3 } });
  out.echo = await collect(client, { query: ECHO, variables: { text: "héllo ✓" } });
  out.unknown = await collect(client, { query: "{ nothing }" });
  out.badVariables = await collect(client, { query: COUNTDOWN, variables: { from: "x" } });
  // Two results of a long countdown, then the client completes it.
  out.stopped = await collect(client, { query: COUNTDOWN, variables: { from: 100 } }, 2);
  // Two operations at once on the one socket.
  const [a, b] = await Promise.all([
    collect(client, { query: COUNTDOWN, variables: { from: 1 } }),
    collect(client, { query: ECHO, variables: { text: "both" } }),
  ]);
  out.concurrent = [a, b];
  out.pongReceived = (await pong.promise) === null;
  await client.dispose();
  out.close = await closed.promise;
  return out;
}

async function forbidden() {
  const closed = closedPromise();
  const client = createClient({
    url,
    webSocketImpl: WebSocket,
    retryAttempts: 0,
    connectionParams: { token: "wrong-token" },
    on: { closed: (event) => closed.resolve({ code: event.code, reason: event.reason }) },
  });
  const attempt = await collect(client, { query: ECHO, variables: { text: "never" } });
  await client.dispose();
  return { attempt, close: await closed.promise };
}

const scenarios = { flow, forbidden };
if (!scenarios[scenario]) throw new Error(`unknown scenario ${scenario}`);
console.log(JSON.stringify(await scenarios[scenario]()));
