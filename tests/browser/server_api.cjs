// The Herald server API as the browser tests call it from Node: POST /api/<method> with the API key,
// bounded by a 5 s timeout; never throws (a failed call comes back with status 0 and the error text).
function serverApi(base, apiKey) {
  const api = async (method, body) => {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), 5000);
    try {
      const res = await fetch(`${base}/api/${method}`, {
        method: 'POST',
        headers: { 'X-API-Key': apiKey, 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      const text = await res.text();
      let json = null;
      try { json = JSON.parse(text); } catch (_) { /* reported by apiOk */ }
      return { status: res.status, json, text };
    } catch (e) {
      return { status: 0, json: null, text: String(e) };
    } finally {
      clearTimeout(timer);
    }
  };
  const apiOk = (r) => r.status === 200 && r.json !== null && !r.json.error && typeof r.json.result === 'object';
  return { api, apiOk };
}

module.exports = { serverApi };
