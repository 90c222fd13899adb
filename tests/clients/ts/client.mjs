// The official TypeScript SDK client driving one gateway route, for the client-matrix tests
// (tests/e2e/test_client_matrix.py), which run it as a subprocess and assert on the one JSON object it prints.
// The same scenarios as tests/clients/py_client.py:
//
//   node client.mjs --transport streamable-http|sse --url URL --key KEY --reader-key KEY [--resumable]
//
// WebSocket is not driven: the SDK's WebSocketClientTransport cannot send an Authorization header (it uses the
// browser WebSocket API) and Node 20 has no global WebSocket.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { CallToolResultSchema, ElicitRequestSchema } from '@modelcontextprotocol/sdk/types.js';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    transport: { type: 'string' },
    url: { type: 'string' },
    key: { type: 'string' },
    'reader-key': { type: 'string' },
    resumable: { type: 'boolean', default: false },
  },
});
const SDK = JSON.parse(
  readFileSync(new URL('./node_modules/@modelcontextprotocol/sdk/package.json', import.meta.url), 'utf8'),
).version;
const DEADLINE_MS = 30000;

function describe(err) {
  return {
    kind: err?.constructor?.name ?? typeof err,
    code: err?.code,
    reason: err?.data?.reason ?? null,
    text: String(err?.message ?? err).slice(0, 500),
  };
}

const text = (result) => result.content.map((c) => c.text ?? '').join('');

async function connect(key, deletes, elicited) {
  const headers = { Authorization: `Bearer ${key}` };
  // records the status of the DELETE the transport sends when the session ends
  const recording = async (url, init) => {
    const response = await fetch(url, init);
    if (init?.method === 'DELETE') deletes.push(response.status);
    return response;
  };
  const url = new URL(args.url);
  const transport =
    args.transport === 'sse'
      ? new SSEClientTransport(url, { requestInit: { headers } })
      : new StreamableHTTPClientTransport(url, { requestInit: { headers }, fetch: recording });
  const client = new Client({ name: 'matrix-ts', version: '1' }, { capabilities: { elicitation: {} } });
  client.setRequestHandler(ElicitRequestSchema, async (request) => {
    elicited.push(request.params.message);
    return { action: 'accept', content: { confirmed: true } };
  });
  await client.connect(transport);
  return { client, transport };
}

async function refusal() {
  const out = {};
  const { client } = await connect(args['reader-key'], [], []);
  try {
    const result = await client.callTool({ name: 'add', arguments: { a: 1, b: 1 } });
    out.refused = { kind: 'none', isError: result.isError ?? false, text: text(result) };
  } catch (err) {
    out.refused = describe(err);
  }
  try {
    const listed = await client.listTools();
    out.after = listed.tools.map((t) => t.name).sort();
  } catch (err) {
    out.after_error = describe(err);
  }
  await client.close();
  return out;
}

async function main(out) {
  const deletes = [];
  const elicited = [];
  const { client, transport } = await connect(args.key, deletes, elicited);
  out.call = text(await client.callTool({ name: 'add', arguments: { a: 2, b: 40 } }));
  const events = [];
  const counted = await client.callTool({ name: 'count', arguments: { n: 3, delay: 0.05 } }, CallToolResultSchema, {
    onprogress: (p) => events.push([p.progress, p.total ?? null]),
  });
  out.progress = { events, result: text(counted) };
  const confirmed = await client.callTool({ name: 'confirm_action', arguments: { action: 'deploy' } });
  out.elicitation = { asked: elicited, result: text(confirmed) };
  if (args.transport === 'streamable-http') {
    if (args.resumable) {
      const request = { method: 'tools/call', params: { name: 'count', arguments: { n: 3, delay: 0.05 } } };
      const tokens = [];
      const first = await client.request(request, CallToolResultSchema, { onresumptiontoken: (t) => tokens.push(t) });
      const replayedTokens = [];
      // the same request resumed after its first event: a GET with Last-Event-ID, answered by the upstream's replay
      const replayed = await client.request(request, CallToolResultSchema, {
        resumptionToken: tokens[0],
        onresumptiontoken: (t) => replayedTokens.push(t),
      });
      out.resumption = { tokens, first: text(first), replayed: text(replayed), replayed_tokens: replayedTokens };
    }
    const id = transport.sessionId;
    await transport.terminateSession();
    out.session = { id, deletes };
  }
  await client.close();
}

const out = { sdk: SDK, transport: args.transport };
const timer = setTimeout(() => {
  out.fatal = { kind: 'Timeout', text: `not done within ${DEADLINE_MS} ms` };
  console.log(JSON.stringify(out));
  process.exit(0);
}, DEADLINE_MS * 2);
try {
  out.refusal = await refusal();
  await main(out);
} catch (err) {
  out.fatal = describe(err);
  out.traceback = String(err?.stack ?? '').slice(0, 3000);
}
clearTimeout(timer);
console.log(JSON.stringify(out));
process.exit(0);
