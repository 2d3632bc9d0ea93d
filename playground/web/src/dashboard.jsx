// The analysts' dashboard: call volume per day, status, talk-time share per speaker, sentiment
// over time, silence and interruptions, top topics and categories — filterable by time range
// and tag, updated live from the subscription. Built only on the public GraphQL API
// (`callStats`, `calls`, `callEvents`), so it is also an example for frontend developers.
// Bundled by build.mjs and served by the binary at /dashboard.
import React, { useCallback, useEffect, useState } from 'react';
import { createRoot } from 'react-dom/client';
import { createClient } from 'graphql-ws';

const KEY_STORE = 'voicegraph.apiKey';
const http = location.origin + '/graphql';
const ws = http.replace(/^http/, 'ws');

const STATS = `query Dashboard($filter: CallFilter) {
  callStats(filter: $filter) {
    total byStatus { status count } totalDurationMs averageDurationMs
    talkTime { speaker totalMs share } totalSilenceMs totalOverlapMs interruptions averageSentiment
    daily { date total completed failed averageSentiment }
  }
  calls(first: 100, filter: $filter, orderBy: { field: CREATED_AT, direction: DESC }) {
    nodes { topics categories { name } }
  }
}`;
const EVENTS = 'subscription DashboardEvents { callEvents(filter: { kinds: [SUBMITTED, COMPLETED, FAILED] }) { kind callId } }';

async function query(key, variables) {
  const r = await fetch(http, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: JSON.stringify({ query: STATS, variables }),
  });
  const body = await r.json();
  if (body.errors) throw new Error(body.errors[0].message);
  return body.data;
}

const W = 560;
const H = 180;

function Bars({ name, items, color = '#3b82f6', format = (v) => v }) {
  const max = Math.max(1, ...items.map((i) => i.value));
  const row = 26;
  return (
    <svg data-chart={name} data-points={items.length} width={W} height={Math.max(row, items.length * row)} role="img">
      {items.map((item, i) => {
        const w = ((W - 190) * item.value) / max;
        return (
          <g key={item.label} transform={`translate(0, ${i * row})`}>
            <text x={0} y={17} fontSize={13}>{item.label}</text>
            <rect className="bar" data-value={item.value} x={130} y={4} width={Math.max(w, 1)} height={18} fill={color} />
            <text x={136 + w} y={17} fontSize={12}>{format(item.value)}</text>
          </g>
        );
      })}
    </svg>
  );
}

function Daily({ days }) {
  const max = Math.max(1, ...days.map((d) => d.total));
  const step = days.length ? (W - 40) / days.length : 0;
  return (
    <svg data-chart="daily" data-points={days.length} width={W} height={H + 24} role="img">
      {days.map((d, i) => {
        const h = (H * d.total) / max;
        const failed = (H * d.failed) / max;
        return (
          <g key={d.date}>
            <rect className="bar" data-value={d.total} x={30 + i * step} y={H - h} width={Math.max(step - 4, 2)} height={h} fill="#3b82f6" />
            <rect className="bar-failed" data-value={d.failed} x={30 + i * step} y={H - failed} width={Math.max(step - 4, 2)} height={failed} fill="#ef4444" />
            <text x={30 + i * step} y={H + 16} fontSize={10}>{d.date.slice(5)}</text>
          </g>
        );
      })}
      <text x={0} y={12} fontSize={11}>{max}</text>
    </svg>
  );
}

function Sentiment({ days }) {
  const points = days.filter((d) => d.averageSentiment !== null);
  const x = (i) => 30 + (points.length > 1 ? (i * (W - 60)) / (points.length - 1) : (W - 60) / 2);
  const y = (v) => H / 2 - (v * H) / 2.2;
  return (
    <svg data-chart="sentiment" data-points={points.length} width={W} height={H} role="img">
      <line x1={30} x2={W - 30} y1={y(0)} y2={y(0)} stroke="#999" strokeDasharray="4 4" />
      <polyline fill="none" stroke="#10b981" strokeWidth={2} points={points.map((d, i) => `${x(i)},${y(d.averageSentiment)}`).join(' ')} />
      {points.map((d, i) => (
        <circle key={d.date} className="point" data-value={d.averageSentiment} cx={x(i)} cy={y(d.averageSentiment)} r={4} fill="#10b981" />
      ))}
      <text x={0} y={12} fontSize={11}>+1</text>
      <text x={0} y={H - 4} fontSize={11}>−1</text>
    </svg>
  );
}

function top(nodes, pick) {
  const counts = new Map();
  for (const n of nodes) for (const v of pick(n)) counts.set(v, (counts.get(v) ?? 0) + 1);
  return [...counts.entries()]
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .slice(0, 8)
    .map(([label, value]) => ({ label, value }));
}

const seconds = (ms) => `${(ms / 1000).toFixed(1)} s`;

function Dashboard() {
  const [key, setKey] = useState(localStorage.getItem(KEY_STORE) || '');
  const [days, setDays] = useState(30);
  const [tag, setTag] = useState('');
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  const [updated, setUpdated] = useState(null);

  const load = useCallback(async () => {
    if (!key) return;
    const filter = { createdAfter: new Date(Date.now() - days * 86400_000).toISOString() };
    if (tag.trim()) filter.tags = [tag.trim()];
    try {
      setData(await query(key, { filter }));
      setError(null);
      setUpdated(new Date());
    } catch (e) {
      setError(String(e.message ?? e));
    }
  }, [key, days, tag]);

  useEffect(() => {
    load();
  }, [load]);

  // Live: every milestone of any call reloads the figures (a burst reloads once).
  useEffect(() => {
    if (!key) return undefined;
    const client = createClient({ url: ws, connectionParams: { Authorization: `Bearer ${key}` }, retryAttempts: Infinity });
    let timer;
    const stop = client.subscribe(
      { query: EVENTS },
      {
        next: () => {
          clearTimeout(timer);
          timer = setTimeout(load, 300);
        },
        error: (e) => setError(`live updates stopped: ${e.message ?? e}`),
        complete: () => {},
      },
    );
    return () => {
      clearTimeout(timer);
      stop();
      client.dispose();
    };
  }, [key, load]);

  const s = data?.callStats;
  const nodes = data?.calls?.nodes ?? [];
  return (
    <>
      <div id="bar">
        <strong>voicegraph dashboard</strong>
        <label htmlFor="key">API key</label>
        <input id="key" type="password" defaultValue={key} autoComplete="off"
          onChange={(e) => { localStorage.setItem(KEY_STORE, e.target.value.trim()); setKey(e.target.value.trim()); }} />
        <label htmlFor="days">last</label>
        <select id="days" value={days} onChange={(e) => setDays(Number(e.target.value))}>
          <option value={7}>7 days</option>
          <option value={30}>30 days</option>
          <option value={90}>90 days</option>
          <option value={365}>365 days</option>
        </select>
        <label htmlFor="tag">tag</label>
        <input id="tag" placeholder="any" value={tag} onChange={(e) => setTag(e.target.value)} />
        <small>{updated ? `updated ${updated.toLocaleTimeString()}` : ''}</small>
      </div>
      {!key && <p className="note">Paste an API key above (any role) to see your tenant's calls.</p>}
      {error && <p className="error" role="alert">{error}</p>}
      {s && (
        <main>
          <section className="tiles">
            <div><b data-tile="total">{s.total}</b> calls</div>
            <div><b data-tile="duration">{s.averageDurationMs === null ? '–' : seconds(s.averageDurationMs)}</b> average length</div>
            <div><b data-tile="silence">{seconds(s.totalSilenceMs)}</b> silence</div>
            <div><b data-tile="overlap">{seconds(s.totalOverlapMs)}</b> talking over</div>
            <div><b data-tile="interruptions">{s.interruptions}</b> interruptions</div>
            <div><b data-tile="sentiment">{s.averageSentiment === null ? '–' : s.averageSentiment.toFixed(2)}</b> average sentiment</div>
          </section>
          <section><h2>Calls per day</h2><Daily days={s.daily} /></section>
          <section><h2>Status</h2><Bars name="status" items={s.byStatus.map((b) => ({ label: b.status, value: b.count }))} /></section>
          <section><h2>Talk time</h2><Bars name="talk-time" color="#8b5cf6" format={(v) => `${Math.round(v * 100)} %`} items={s.talkTime.map((t) => ({ label: t.speaker, value: t.share }))} /></section>
          <section><h2>Sentiment over time</h2><Sentiment days={s.daily} /></section>
          <section><h2>Top topics <small>(latest {nodes.length} calls)</small></h2><Bars name="topics" color="#f59e0b" items={top(nodes, (n) => n.topics)} /></section>
          <section><h2>Top categories <small>(latest {nodes.length} calls)</small></h2><Bars name="categories" color="#14b8a6" items={top(nodes, (n) => n.categories.map((c) => c.name))} /></section>
        </main>
      )}
    </>
  );
}

createRoot(document.getElementById('dashboard')).render(<Dashboard />);
