// The official `openai` npm SDK against ragserve-router's OpenAI-compatible HTTP API (node --test).
// Started by tests/e2e/openai_http_e2e_test.cc, which runs a real cluster and passes in env:
//   RAGSERVE_HTTP_URL      http://127.0.0.1:<port>/v1
//   RAGSERVE_TOKEN         the bearer token (auth is on)
//   RAGSERVE_MODEL         the served model name
//   RAGSERVE_QUESTION      the question asked
//   RAGSERVE_MAX_TOKENS    answer tokens (greedy, ignore_eos)
//   RAGSERVE_EXPECT_PLAIN  the gRPC Query answer to the question as a chat without retrieval
//   RAGSERVE_EXPECT_RAG    the gRPC Query answer with retrieval from RAGSERVE_COLLECTION
//   RAGSERVE_EXPECT_IDS    the passage ids that gRPC Query retrieved (comma-separated)
//   RAGSERVE_COLLECTION, RAGSERVE_TOP_K
import assert from 'node:assert/strict';
import { test } from 'node:test';
import OpenAI from 'openai';

const env = process.env;
const client = new OpenAI({ baseURL: env.RAGSERVE_HTTP_URL, apiKey: env.RAGSERVE_TOKEN, maxRetries: 0 });
const maxTokens = Number(env.RAGSERVE_MAX_TOKENS);
const rag = { collection: env.RAGSERVE_COLLECTION, top_k: Number(env.RAGSERVE_TOP_K) };
const expectedIds = env.RAGSERVE_EXPECT_IDS.split(',');

function chat(extra) {
  return {
    model: env.RAGSERVE_MODEL,
    messages: [{ role: 'user', content: env.RAGSERVE_QUESTION }],
    max_tokens: maxTokens,
    temperature: 0,
    ignore_eos: true,  // vLLM's extra field: the random test model must not stop early
    ...extra,
  };
}

async function collect(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  const text = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
  return { chunks, text };
}

test('non-streaming chat completion equals the gRPC answer, with usage', async () => {
  const r = await client.chat.completions.create(chat({}));
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.model, env.RAGSERVE_MODEL);
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(r.choices[0].message.content, env.RAGSERVE_EXPECT_PLAIN);
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, maxTokens);
  assert.ok(r.usage.prompt_tokens > 0);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + maxTokens);
  assert.equal(r.rag, undefined);
});

test('streaming chat completion equals the gRPC answer and reports usage when asked', async () => {
  const stream = await client.chat.completions.create(
    chat({ stream: true, stream_options: { include_usage: true } }));
  const { chunks, text } = await collect(stream);
  assert.equal(text, env.RAGSERVE_EXPECT_PLAIN);
  assert.equal(chunks[0].object, 'chat.completion.chunk');
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  const finish = chunks.filter((c) => c.choices[0]?.finish_reason);
  assert.equal(finish.length, 1);
  assert.equal(finish[0].choices[0].finish_reason, 'length');
  const last = chunks[chunks.length - 1];
  assert.deepEqual(last.choices, []);
  assert.equal(last.usage.completion_tokens, maxTokens);
  assert.ok(chunks.length > 3, 'tokens arrive as several chunks');
});

test('RAG chat returns the passages and the gRPC Query answer', async () => {
  const r = await client.chat.completions.create(chat({ rag }));
  assert.deepEqual(r.rag.passages.map((p) => p.id), expectedIds);
  for (const p of r.rag.passages) assert.ok(p.text.length > 0);
  assert.equal(r.choices[0].message.content, env.RAGSERVE_EXPECT_RAG);
});

test('streamed RAG chat carries the passages on its first chunk', async () => {
  const stream = await client.chat.completions.create(chat({ rag, stream: true }));
  const { chunks, text } = await collect(stream);
  assert.deepEqual(chunks[0].rag.passages.map((p) => p.id), expectedIds);
  for (const c of chunks.slice(1)) assert.equal(c.rag, undefined);
  assert.equal(text, env.RAGSERVE_EXPECT_RAG);
});

test('models, completions and embeddings', async () => {
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), [env.RAGSERVE_MODEL]);
  const c = await client.completions.create({
    model: env.RAGSERVE_MODEL, prompt: 'Once upon a time', max_tokens: 5, temperature: 0,
    ignore_eos: true,
  });
  assert.equal(c.object, 'text_completion');
  assert.equal(c.usage.completion_tokens, 5);
  assert.ok(c.choices[0].text.length > 0);
  const e = await client.embeddings.create({
    model: env.RAGSERVE_COLLECTION, input: ['a river', 'a mountain'],
  });
  assert.equal(e.data.length, 2);
  assert.equal(e.data[0].embedding.length, e.data[1].embedding.length);
  const norm = Math.hypot(...e.data[0].embedding);
  assert.ok(Math.abs(norm - 1) < 1e-3, `hashing embeddings are unit vectors, got ${norm}`);
});

test('errors arrive as the SDK error classes', async () => {
  await assert.rejects(client.chat.completions.create(chat({ model: 'no-such-model' })),
    (err) => err instanceof OpenAI.NotFoundError && err.code === 'model_not_found');
  await assert.rejects(client.chat.completions.create(chat({ n: 2 })),
    (err) => err instanceof OpenAI.BadRequestError && err.param === 'n');
  await assert.rejects(
    client.chat.completions.create(chat({ rag: { collection: 'no-such-collection' } })),
    (err) => err instanceof OpenAI.NotFoundError);
  const anonymous = new OpenAI({ baseURL: env.RAGSERVE_HTTP_URL, apiKey: 'wrong', maxRetries: 0 });
  await assert.rejects(anonymous.chat.completions.create(chat({})),
    (err) => err instanceof OpenAI.AuthenticationError);
});
