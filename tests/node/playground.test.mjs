// The playground in a real browser (Debian's Chromium driven by playwright-core) with every
// request that leaves the app's origin refused: the page must render GraphiQL from the assets
// the binary serves, run an example query, and show a call's events on a subscription tab as
// the call is submitted.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';

import { chromium } from 'playwright-core';

import { KEY, startServer, submit, subscribed } from './server.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

/** Opens the example tab of operation `name` and waits for its document in the editor. */
async function openTab(page, name) {
  await page.locator('.graphiql-tab', { hasText: name }).click();
  const editor = page.locator('.graphiql-query-editor');
  const deadline = Date.now() + 10_000;
  while (!(await editor.innerText()).includes(` ${name}`)) {
    assert.ok(Date.now() < deadline, `the ${name} tab never showed its document`);
    await page.waitForTimeout(50);
  }
}

/** The text of the response pane, once it matches `pattern`. */
async function response(page, pattern, what) {
  const pane = page.locator('.graphiql-response');
  const deadline = Date.now() + 30_000;
  let text = '';
  while (Date.now() < deadline) {
    text = (await pane.innerText().catch(() => '')) ?? '';
    if (pattern.test(text)) return text;
    await page.waitForTimeout(100);
  }
  assert.fail(`${what}: the response pane never matched ${pattern}; it shows:\n${text}`);
}

test('the playground works with the network cut off', async () => {
  assert.ok(existsSync(CHROMIUM), `Chromium is needed at ${CHROMIUM} (Debian: apt-get install chromium)`);
  const server = await startServer();
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  try {
    const context = await browser.newContext();
    const refused = [];
    await context.route('**/*', (route) => {
      if (new URL(route.request().url()).origin === server.url) return route.continue();
      refused.push(route.request().url());
      return route.abort('internetdisconnected');
    });
    await context.routeWebSocket(/.*/, (ws) => {
      if (new URL(ws.url()).host === new URL(server.url).host) return ws.connectToServer();
      refused.push(ws.url());
      return ws.close();
    });
    const page = await context.newPage();
    const problems = [];
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(`console: ${m.text()}`);
    });

    await page.goto(`${server.url}/`);
    await page.waitForSelector('.graphiql-container', { timeout: 30_000 });
    await page.fill('#key', KEY);
    await page.locator('#key').dispatchEvent('change');

    // An example query, from its tab.
    await openTab(page, 'ListCalls');
    await page.locator('.graphiql-execute-button').click();
    const listed = await response(page, /"totalCount"/, 'ListCalls');
    assert.match(listed, /"data"/);

    // The subscription tab, then a call submitted while it runs.
    await openTab(page, 'WatchEvents');
    await page.locator('.graphiql-execute-button').click();
    // The example follows events from now on: submit once the subscription is live.
    await subscribed(server);
    const id = await submit(server);
    const seen = await response(page, new RegExp(`"${id}"[\\s\\S]*"COMPLETED"|"COMPLETED"[\\s\\S]*"${id}"`), 'WatchEvents');
    assert.match(seen, /"callEvents"/);

    assert.deepEqual(refused, [], 'the page asked for something outside its origin');
    assert.deepEqual(problems, [], 'the page reported errors');
  } finally {
    await browser.close();
  }
});
