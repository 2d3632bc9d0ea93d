// The playground's page script: GraphiQL with an API-key field, the example operations as tabs,
// and subscriptions over graphql-ws. Bundled (scripts and styles) by build.mjs from the packages
// pinned in package-lock.json and served by the binary itself, so the page reaches nothing but
// its own origin.
import React from 'react';
import { createRoot } from 'react-dom/client';
import { GraphiQL } from 'graphiql';
import { createGraphiQLFetcher } from '@graphiql/toolkit';
import { createClient } from 'graphql-ws';
import { parse } from 'graphql';
import 'graphiql/graphiql.css';

const keyInput = document.getElementById('key');
keyInput.value = localStorage.getItem('voicegraph.apiKey') || '';
const auth = () => (keyInput.value ? { Authorization: 'Bearer ' + keyInput.value.trim() } : {});
const http = location.origin + '/graphql';
const ws = http.replace(/^http/, 'ws');

let fetcher;
function makeFetcher() {
  const wsClient = createClient({ url: ws, lazy: true, connectionParams: () => auth() });
  fetcher = createGraphiQLFetcher({ url: http, headers: auth(), wsClient });
}

// GraphiQL can run a tab with the operation name and parsed document of the tab it switched
// from; both are taken from the query it sends instead (a name the document does not define
// is dropped when it has one operation, and the server is left to say what is wrong).
function current(params, options) {
  let document;
  try {
    document = parse(params.query);
  } catch {
    return [params, options];
  }
  const names = document.definitions
    .filter((d) => d.kind === 'OperationDefinition' && d.name)
    .map((d) => d.name.value);
  let { operationName } = params;
  if (operationName && !names.includes(operationName)) {
    operationName = names.length === 1 ? names[0] : undefined;
  }
  return [{ ...params, operationName }, { ...options, documentAST: document }];
}

const root = createRoot(document.getElementById('graphiql'));
let tabs = [];
function render() {
  root.render(
    <GraphiQL
      fetcher={(params, options) => fetcher(...current(params, options))}
      defaultTabs={tabs}
      shouldPersistHeaders={false}
    />,
  );
}

keyInput.addEventListener('change', () => {
  localStorage.setItem('voicegraph.apiKey', keyInput.value.trim());
  makeFetcher();
  render();
});

makeFetcher();
fetch('/playground/examples.json')
  .then((r) => r.json())
  .then((list) => {
    tabs = list.map((e) => {
      const m = e.query.match(/^# variables: (.*)$/m);
      return { query: e.query, variables: m ? JSON.stringify(JSON.parse(m[1]), null, 2) : '{}' };
    });
  })
  .catch(() => {})
  .finally(render);
