// voicegraph as browser apps and scripts see it, through the reference clients from npm:
// graphql-http's audit of the GraphQL-over-HTTP spec, graphql-ws (idle past the server's pings,
// a dropped socket resumed from the last cursor), graphql-sse, Apollo Client's automatic
// persisted queries, and a JWT-signed-in app on another origin. Each test starts the real
// binary (VOICEGRAPH_BIN, built by `cargo test`) on its own port and data directory.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, createHmac } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import WebSocket from 'ws';
import { createClient as createWsClient } from 'graphql-ws';
import { createClient as createSseClient } from 'graphql-sse';
import { auditServer } from 'graphql-http';
import { ApolloClient, HttpLink, InMemoryCache, gql } from '@apollo/client';
import { PersistedQueryLink } from '@apollo/client/link/persisted-queries';

import {
  APP_ORIGIN,
  JWT_SECRET,
  KEY,
  PING_MS,
  freePort,
  request,
  sleep,
  startServer,
  submit,
} from './server.mjs';

function hs256(claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  const sig = createHmac('sha256', JWT_SECRET).update(head).digest('base64url');
  return `${head}.${sig}`;
}

/** Collects `n` results of a sink-style subscription. */
function collector() {
  const items = [];
  const waiters = [];
  return {
    items,
    sink: {
      next: (v) => {
        items.push(v);
        for (const w of waiters.splice(0)) w();
      },
      error: (e) => {
        items.push({ error: e });
        for (const w of waiters.splice(0)) w();
      },
      complete: () => {},
    },
    async until(n, ms = 20000) {
      const deadline = Date.now() + ms;
      while (items.length < n) {
        if (Date.now() > deadline) throw new Error(`only ${items.length} of ${n} in ${ms} ms: ${JSON.stringify(items)}`);
        await new Promise((r) => {
          waiters.push(r);
          setTimeout(r, 200);
        });
      }
      return items;
    },
  };
}

test('graphql-http audit: every audit passes, no warnings', async () => {
  const server = await startServer();
  const results = await auditServer({ url: server.graphql });
  const notOk = results.filter((r) => r.status !== 'ok');
  for (const r of notOk) console.error(`${r.status} ${r.id} ${r.name}: ${r.reason}`);
  assert.equal(notOk.length, 0, `${notOk.length} of ${results.length} audits not ok`);
  console.log(`graphql-http audit: ${results.length} of ${results.length} ok`);
});

test('graphql-ws: idle far past the ping interval, then events', async () => {
  const server = await startServer();
  let closed = 0;
  let pings = 0;
  const client = createWsClient({
    url: server.ws,
    webSocketImpl: WebSocket,
    connectionParams: { Authorization: `Bearer ${KEY}` },
    retryAttempts: 0,
    on: { closed: () => closed++, ping: (received) => received && pings++ },
  });
  const events = collector();
  const stop = client.subscribe(
    { query: 'subscription { callEvents(after: "0") { kind callId cursor } }' },
    events.sink,
  );
  await sleep(PING_MS * 8);
  assert.equal(closed, 0, 'the idle socket was closed');
  assert.ok(pings >= 4, `the server pinged ${pings} times`);
  const id = await submit(server);
  const got = await events.until(3);
  assert.deepEqual(
    got.map((e) => [e.data.callEvents.callId, e.data.callEvents.kind]),
    [[id, 'SUBMITTED'], [id, 'PROCESSING'], [id, 'COMPLETED']],
  );
  stop();
  await client.dispose();
});

/** A TCP proxy in front of the server whose connections can be cut. */
async function proxyTo(port) {
  const sockets = new Set();
  const srv = net.createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1');
    sockets.add(client);
    sockets.add(upstream);
    client.pipe(upstream).pipe(client);
    const gone = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', gone).on('close', gone);
    upstream.on('error', gone).on('close', gone);
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return {
    port: srv.address().port,
    cut() {
      for (const s of sockets) s.destroy();
    },
    close() {
      this.cut();
      srv.close();
    },
  };
}

test('graphql-ws: a dropped socket resumes from the last cursor with retryAttempts', async () => {
  const server = await startServer();
  const proxy = await proxyTo(server.port);
  let connects = 0;
  const client = createWsClient({
    url: `ws://127.0.0.1:${proxy.port}/graphql`,
    webSocketImpl: WebSocket,
    connectionParams: { Authorization: `Bearer ${KEY}` },
    retryAttempts: 10,
    retryWait: () => sleep(100),
    shouldRetry: () => true,
    on: { connected: () => connects++ },
  });
  // The README's pattern: keep the last cursor in the payload, which the client re-sends on
  // every reconnect.
  const payload = {
    query: 'subscription($after: String) { callEvents(after: $after) { kind callId cursor } }',
    variables: { after: '0' },
  };
  const seen = [];
  const events = collector();
  client.subscribe(payload, {
    next: (r) => {
      payload.variables.after = r.data.callEvents.cursor;
      seen.push(r.data.callEvents);
      events.sink.next(r);
    },
    error: events.sink.error,
    complete: () => {},
  });
  const a = await submit(server);
  await events.until(3);
  // Cut the connection mid-stream; while it is down, more happens.
  proxy.cut();
  const b = await submit(server);
  await request(server, 'mutation($id: ID!) { tagCall(id: $id, tags: ["after-drop"]) { id } }', { id: a });
  await events.until(7);
  assert.ok(connects >= 2, `connected ${connects} times`);
  const cursors = seen.map((e) => Number(e.cursor));
  assert.deepEqual(cursors, [1, 2, 3, 4, 5, 6, 7], 'every event once, in order');
  assert.ok(seen.slice(3).some((e) => e.callId === a && e.kind === 'TAGGED'));
  assert.equal(seen.slice(3).filter((e) => e.callId === b).length, 3);
  await client.dispose();
  proxy.close();
});

test('graphql-sse: subscriptions and queries over server-sent events', async () => {
  const server = await startServer();
  const client = createSseClient({
    url: server.graphql,
    headers: { Authorization: `Bearer ${KEY}` },
    retryAttempts: 0,
  });
  const events = collector();
  const stop = client.subscribe(
    { query: 'subscription { callEvents(after: "0") { kind callId } }' },
    events.sink,
  );
  const id = await submit(server);
  const got = await events.until(3);
  assert.deepEqual(
    got.map((e) => e.data.callEvents.kind),
    ['SUBMITTED', 'PROCESSING', 'COMPLETED'],
  );
  assert.ok(got.every((e) => e.data.callEvents.callId === id));
  stop();
  const one = collector();
  client.subscribe({ query: '{ viewer { role } }' }, one.sink);
  const [result] = await one.until(1);
  assert.equal(result.data.viewer.role, 'ADMIN');
  client.dispose();
});

test('Apollo Client: automatic persisted queries send the hash once the server knows it', async () => {
  const server = await startServer();
  const bodies = [];
  const recordingFetch = async (uri, init) => {
    bodies.push(JSON.parse(init.body));
    return fetch(uri, init);
  };
  const sha256 = (text) => createHash('sha256').update(text).digest('hex');
  const client = new ApolloClient({
    cache: new InMemoryCache(),
    link: new PersistedQueryLink({ sha256 }).concat(
      new HttpLink({
        uri: server.graphql,
        headers: { authorization: `Bearer ${KEY}` },
        fetch: recordingFetch,
      }),
    ),
  });
  const query = gql`
    query Me {
      viewer {
        role
      }
    }
  `;
  const first = await client.query({ query, fetchPolicy: 'network-only' });
  assert.equal(first.data.viewer.role, 'ADMIN');
  // First the hash alone (unknown), then hash and text.
  assert.equal(bodies.length, 2, JSON.stringify(bodies));
  assert.equal(bodies[0].query, undefined);
  assert.ok(bodies[1].query);
  const second = await client.query({ query, fetchPolicy: 'network-only' });
  assert.equal(second.data.viewer.role, 'ADMIN');
  assert.equal(bodies.length, 3);
  assert.equal(bodies[2].query, undefined, 'the known query went as its hash alone');
  assert.equal(bodies[2].extensions.persistedQuery.sha256Hash, bodies[0].extensions.persistedQuery.sha256Hash);
});

test('a browser app on another origin signs in with a JWT: CORS, query, WebSocket, SSE', async () => {
  const server = await startServer();
  const tenant = (await request(server, 'mutation { createTenant(input: {name: "browser"}) { tenant { id } } }'))
    .createTenant.tenant.id;
  const integrator = (
    await request(server, 'mutation($t: ID!) { createApiKey(input: {tenantId: $t, role: INTEGRATOR, name: "i"}) { secret } }', {
      t: tenant,
    })
  ).createApiKey.secret;
  const now = Math.floor(Date.now() / 1000);
  const token = hs256({ sub: 'user-1', tenant, role: 'viewer', exp: now + 600 });

  // The preflight a browser sends before the real request.
  const pre = await fetch(server.graphql, {
    method: 'OPTIONS',
    headers: {
      origin: APP_ORIGIN,
      'access-control-request-method': 'POST',
      'access-control-request-headers': 'authorization,content-type',
    },
  });
  assert.ok(pre.ok, `preflight ${pre.status}`);
  assert.equal(pre.headers.get('access-control-allow-origin'), APP_ORIGIN);
  const r = await fetch(server.graphql, {
    method: 'POST',
    headers: { origin: APP_ORIGIN, 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify({ query: '{ viewer { role tenant { id } } }' }),
  });
  assert.equal(r.headers.get('access-control-allow-origin'), APP_ORIGIN);
  const me = await r.json();
  assert.deepEqual(me.data.viewer, { role: 'VIEWER', tenant: { id: tenant } });

  // WebSocket from that origin, signed in with the JWT.
  const ws = createWsClient({
    url: server.ws,
    webSocketImpl: class extends WebSocket {
      constructor(url, protocols) {
        super(url, protocols, { origin: APP_ORIGIN });
      }
    },
    connectionParams: { Authorization: `Bearer ${token}` },
    retryAttempts: 0,
  });
  const overWs = collector();
  ws.subscribe({ query: 'subscription { callEvents(after: "0") { kind callId } }' }, overWs.sink);
  const sse = createSseClient({ url: server.graphql, headers: { Authorization: `Bearer ${token}` }, retryAttempts: 0 });
  const overSse = collector();
  sse.subscribe({ query: 'subscription { callEvents(after: "0") { kind callId } }' }, overSse.sink);
  const id = await submit(server, integrator);
  for (const c of [overWs, overSse]) {
    const [e] = await c.until(1);
    assert.deepEqual(e.data.callEvents, { kind: 'SUBMITTED', callId: id });
  }
  await ws.dispose();
  sse.dispose();

  // A page of a foreign origin cannot open a socket.
  const foreign = new WebSocket(server.ws, 'graphql-transport-ws', { origin: 'https://evil.example.com' });
  const status = await new Promise((resolve) => {
    foreign.on('unexpected-response', (_req, res) => resolve(res.statusCode));
    foreign.on('open', () => resolve('open'));
    foreign.on('error', () => {});
  });
  assert.equal(status, 403);
});
