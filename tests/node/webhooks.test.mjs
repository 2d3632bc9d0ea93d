// Webhooks verified by an independent implementation of the Standard Webhooks specification:
// npm's `standardwebhooks` checks every delivery the server sends to a local receiver, before
// and after a secret rotation (when both secrets sign), and refuses a tampered one.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { Webhook } from 'standardwebhooks';

import { KEY, request, sleep, startServer, submit } from './server.mjs';

/** A local endpoint that keeps every request it is sent and answers 204. */
async function receiver() {
  const received = [];
  const waiters = [];
  const srv = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      received.push({ headers: req.headers, body: Buffer.concat(chunks).toString('utf8') });
      res.writeHead(204).end();
      for (const w of waiters.splice(0)) w();
    });
  });
  // Idle connections stay open longer than the server's pool keeps them (node closes them
  // after 5 s by default, which a delivery reusing one at that moment would see as a failure).
  srv.keepAliveTimeout = 60_000;
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${srv.address().port}/hooks`,
    received,
    /** Waits until `pred(received)` holds. */
    async until(pred, what) {
      const deadline = Date.now() + 30_000;
      while (!pred(received)) {
        assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
        await Promise.race([new Promise((r) => waiters.push(r)), sleep(200)]);
      }
    },
    close: () => new Promise((r) => srv.close(r)),
  };
}

async function tenantAdmin(server) {
  const tenant = (await request(server, 'mutation { createTenant(input: {name: "hooks"}) { tenant { id } } }'))
    .createTenant.tenant.id;
  return (
    await request(server, 'mutation($t: ID!) { createApiKey(input: {tenantId: $t, role: ADMIN, name: "a"}) { secret } }', {
      t: tenant,
    })
  ).createApiKey.secret;
}

/** The kinds of the events of `callId` among the requests `list`, sorted. */
const kindsOf = (list, callId) =>
  list
    .map((r) => JSON.parse(r.body))
    .filter((m) => m.data.event.callId === callId)
    .map((m) => m.data.event.kind)
    .sort();
const EVERY_KIND = ['COMPLETED', 'PROCESSING', 'SUBMITTED'];
/** Whether every event of a call that went well has arrived (deliveries run concurrently). */
const completedOf = (callId) => (list) => kindsOf(list, callId).length >= EVERY_KIND.length;

test('deliveries verify with standardwebhooks, across a secret rotation', async () => {
  const server = await startServer({ VOICEGRAPH_WEBHOOK_RETRY_BASE_MS: '200' });
  const hook = await receiver();
  try {
    const admin = await tenantAdmin(server);
    const created = (
      await request(
        server,
        'mutation($u: String!) { createWebhook(input: {url: $u, description: "node"}) { secret webhook { id events } } }',
        { u: hook.url },
        admin,
      )
    ).createWebhook;
    assert.match(created.secret, /^whsec_/);
    const oldSecret = created.secret;
    const webhookId = created.webhook.id;

    const first = await submit(server, admin, 'Hello, I would like to cancel my order, thank you.');
    await hook.until(completedOf(first), 'the first call completed');
    const verifier = new Webhook(oldSecret);
    const messages = hook.received.map((r) => verifier.verify(r.body, r.headers));
    assert.deepEqual(kindsOf(hook.received, first), EVERY_KIND);
    assert.deepEqual(messages.map((m) => m.type).sort(), ['call.completed', 'call.processing', 'call.submitted']);
    const done = messages.find((m) => m.type === 'call.completed');
    assert.equal(done.data.call.status, 'COMPLETED');
    assert.equal(typeof done.data.call.summary, 'string');
    assert.equal(done.data.event.callId, first);
    // One message id per delivery, and a signature that covers the body.
    const ids = hook.received.map((r) => r.headers['webhook-id']);
    assert.equal(new Set(ids).size, ids.length);
    const tampered = { ...hook.received[0], body: hook.received[0].body.replace('"type"', '"type" ') };
    assert.throws(() => verifier.verify(tampered.body, tampered.headers), /signature/i);
    assert.throws(() => new Webhook('whsec_' + Buffer.from('x'.repeat(32)).toString('base64')).verify(hook.received[0].body, hook.received[0].headers));

    // Rotation: during the grace period both secrets sign, so either verifies.
    const rotated = (
      await request(server, 'mutation($id: ID!) { rotateWebhookSecret(id: $id) { secret webhook { previousSecretExpiresAt } } }', { id: webhookId }, admin)
    ).rotateWebhookSecret;
    assert.notEqual(rotated.secret, oldSecret);
    assert.ok(rotated.webhook.previousSecretExpiresAt);
    const before = hook.received.length;
    const second = await submit(server, admin, 'Hi, please send me the invoice again.');
    await hook.until(completedOf(second), 'the second call completed');
    const after = hook.received.slice(before);
    assert.deepEqual(kindsOf(after, second), EVERY_KIND);
    for (const r of after) {
      assert.equal(r.headers['webhook-signature'].split(' ').length, 2, r.headers['webhook-signature']);
      assert.equal(new Webhook(rotated.secret).verify(r.body, r.headers).data.call.id, second);
      assert.equal(new Webhook(oldSecret).verify(r.body, r.headers).data.call.id, second);
    }

    // The delivery log shows each accepted attempt with the endpoint's answer. The server
    // records an attempt once the endpoint's answer is back, which may be after the receiver
    // saw the request: read the log until every delivery the receiver got is in it.
    const deliveredLog = async () =>
      (
        await request(
          server,
          'query($w: ID!, $c: ID!) { webhookDeliveries(webhookId: $w, filter: {callId: $c, status: DELIVERED}) { nodes { status messageId attempts { succeeded responseStatus latencyMs } } } }',
          { w: webhookId, c: second },
          admin,
        )
      ).webhookDeliveries.nodes;
    const deadline = Date.now() + 30_000;
    let log = await deliveredLog();
    while (log.length < after.length) {
      assert.ok(Date.now() < deadline, `the log shows ${log.length} of ${after.length} deliveries`);
      await sleep(100);
      log = await deliveredLog();
    }
    assert.equal(log.length, after.length);
    for (const d of log) {
      assert.equal(d.status, 'DELIVERED');
      assert.deepEqual(d.attempts.map((a) => [a.succeeded, a.responseStatus]), [[true, 204]]);
      assert.ok(after.some((r) => r.headers['webhook-id'] === d.messageId));
    }
    // Endpoints are the tenant's own: the platform admin's tenant lists none of them.
    assert.deepEqual((await request(server, '{ webhooks { id } }', {}, KEY)).webhooks, []);
  } finally {
    await hook.close();
  }
});
