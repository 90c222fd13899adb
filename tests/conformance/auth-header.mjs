// Preloaded into the conformance suite's Node process (`node --import`) when MGW_CONFORMANCE_AUTHORIZATION is set:
// adds that value as the Authorization header of every HTTP request the process makes. The suite has no option
// for credentials, and the gateway's API-key routes refuse a request without one. Both the suite's fetch calls and
// its undici.request calls (the dns-rebinding scenario) go through undici's global dispatcher, replaced here.
import { Agent, setGlobalDispatcher } from 'undici';

const value = process.env.MGW_CONFORMANCE_AUTHORIZATION;

function withAuthorization(headers) {
  if (headers == null) return { authorization: value };
  if (Array.isArray(headers)) {
    // flat [name, value, name, value, ...]
    const out = [];
    for (let i = 0; i < headers.length; i += 2) {
      if (String(headers[i]).toLowerCase() !== 'authorization') out.push(headers[i], headers[i + 1]);
    }
    return [...out, 'authorization', value];
  }
  const out = {};
  for (const [name, v] of Object.entries(headers)) {
    if (name.toLowerCase() !== 'authorization') out[name] = v;
  }
  out.authorization = value;
  return out;
}

if (value) {
  const agent = new Agent().compose(
    (dispatch) => (opts, handler) => dispatch({ ...opts, headers: withAuthorization(opts.headers) }, handler),
  );
  setGlobalDispatcher(agent);
}
