// The analysts' dashboard in a real browser (Debian's Chromium, playwright-core), every request
// off the app's origin refused: with seeded calls its charts are drawn from them (the SVG's
// data, and the pixels of a screenshot), and a call submitted while it is open shows up live.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { inflateSync } from 'node:zlib';

import { chromium } from 'playwright-core';

import { KEY, request, startServer, submit, subscribed } from './server.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

/** The RGBA pixels of a PNG (8-bit RGB or RGBA, as Chromium's screenshots are). */
function pixels(png) {
  let at = 8;
  let width = 0;
  let height = 0;
  let channels = 0;
  const data = [];
  while (at < png.length) {
    const len = png.readUInt32BE(at);
    const type = png.toString('ascii', at + 4, at + 8);
    const body = png.subarray(at + 8, at + 8 + len);
    if (type === 'IHDR') {
      width = body.readUInt32BE(0);
      height = body.readUInt32BE(4);
      assert.equal(body[8], 8, '8-bit');
      channels = { 2: 3, 6: 4 }[body[9]];
      assert.ok(channels, `colour type ${body[9]}`);
    } else if (type === 'IDAT') {
      data.push(body);
    }
    at += 12 + len;
  }
  const raw = inflateSync(Buffer.concat(data));
  const stride = width * channels;
  const out = Buffer.alloc(width * height * 4);
  let prev = Buffer.alloc(stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = Buffer.from(raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1)));
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? line[x - channels] : 0;
      const b = prev[x];
      const c = x >= channels ? prev[x - channels] : 0;
      const p = a + b - c;
      const pa = Math.abs(p - a);
      const pb = Math.abs(p - b);
      const pc = Math.abs(p - c);
      const paeth = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      line[x] = (line[x] + [0, a, b, (a + b) >> 1, paeth][filter]) & 255;
    }
    for (let x = 0; x < width; x++) {
      for (let k = 0; k < 4; k++) {
        out[(y * width + x) * 4 + k] = k < channels ? line[x * channels + k] : 255;
      }
    }
    prev = line;
  }
  return { width, height, out };
}

/** How many pixels of the screenshot are (nearly) `rgb`. */
function count(png, [r, g, b]) {
  const { out } = pixels(png);
  let n = 0;
  for (let i = 0; i < out.length; i += 4) {
    if (Math.abs(out[i] - r) < 8 && Math.abs(out[i + 1] - g) < 8 && Math.abs(out[i + 2] - b) < 8) n++;
  }
  return n;
}

test('the dashboard draws the seeded calls and follows new ones live', async () => {
  const server = await startServer();
  // Seed: three calls, analysed; two with a transcript (sentiment and topics come from it).
  const transcript =
    'agent: Thanks for calling, how can I help?\ncustomer: My invoice is wrong and I am unhappy.\nagent: Sorry, I will send a corrected invoice today.';
  await submit(server, KEY, transcript);
  await submit(server, KEY, transcript);
  await submit(server);
  for (;;) {
    const d = await request(server, '{ callStats { byStatus { status count } } }');
    const done = d.callStats.byStatus.find((s) => s.status === 'COMPLETED')?.count ?? 0;
    if (done === 3) break;
    await new Promise((r) => setTimeout(r, 100));
  }

  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  try {
    const context = await browser.newContext({ viewport: { width: 1300, height: 1400 } });
    const refused = [];
    await context.route('**/*', (route) => {
      if (new URL(route.request().url()).origin === server.url) return route.continue();
      refused.push(route.request().url());
      return route.abort('internetdisconnected');
    });
    const page = await context.newPage();
    const problems = [];
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => m.type() === 'error' && problems.push(`console: ${m.text()}`));
    await page.goto(`${server.url}/dashboard`);
    await page.fill('#key', KEY);

    const tile = (name) => page.locator(`[data-tile="${name}"]`).innerText();
    await page.waitForSelector('[data-tile="total"]', { timeout: 30_000 });
    assert.equal(await tile('total'), '3');
    assert.equal(await tile('interruptions'), String(3 * 1), 'the sample has one interruption');
    // The charts hold the seeded figures.
    const chart = (name) => page.locator(`svg[data-chart="${name}"]`);
    assert.equal(await chart('daily').getAttribute('data-points'), '1');
    assert.equal(await chart('daily').locator('rect.bar').first().getAttribute('data-value'), '3');
    const status = await chart('status').locator('rect.bar').evaluateAll((bars) => bars.map((b) => b.dataset.value));
    assert.deepEqual(status, ['3']);
    const speakers = await chart('talk-time').locator('text').evaluateAll((ts) => ts.map((t) => t.textContent));
    assert.ok(speakers.includes('agent') && speakers.includes('customer'), speakers.join());
    assert.equal(await chart('sentiment').getAttribute('data-points'), '1', 'one day with sentiment');
    const topics = await chart('topics').locator('rect.bar').evaluateAll((bars) => bars.map((b) => Number(b.dataset.value)));
    assert.ok(topics.length >= 1 && topics[0] === 2, `the transcripts' topics, twice: ${topics}`);
    const heights = await page.locator('svg[data-chart] rect.bar').evaluateAll((bars) => bars.map((b) => b.getBoundingClientRect().height));
    assert.ok(heights.length >= 4 && heights.every((h) => h > 0), `${heights}`);

    // The screenshot shows the bars: the volume and status charts' blue, the talk time's violet.
    const shot = await page.screenshot({ fullPage: true, path: process.env.VOICEGRAPH_DASHBOARD_SHOT });
    assert.ok(count(shot, [0x3b, 0x82, 0xf6]) > 2000, 'blue bars are drawn');
    assert.ok(count(shot, [0x8b, 0x5c, 0xf6]) > 1000, 'talk-time bars are drawn');

    // Live: a call submitted now is counted without reloading the page.
    await subscribed(server);
    await submit(server);
    await page.waitForFunction(() => document.querySelector('[data-tile="total"]')?.textContent === '4', null, { timeout: 30_000 });

    // The tag filter narrows the figures.
    await page.fill('#tag', 'no-such-tag');
    await page.waitForFunction(() => document.querySelector('[data-tile="total"]')?.textContent === '0');

    assert.deepEqual(refused, [], 'the page asked for something outside its origin');
    assert.deepEqual(problems, [], 'the page reported errors');
  } finally {
    await browser.close();
  }
});
