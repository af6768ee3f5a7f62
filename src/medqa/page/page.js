// The try-it page of `medqa serve`: posts the pasted passage and question to /invocations (the API,
// with its limits) and shows the answer highlighted in the passage. Everything the user pasted or
// the model returned is inserted as text nodes, never parsed as markup.
"use strict";

const byId = (id) => document.getElementById(id);

function setStatus(text, className = "") {
  const status = byId("status");
  status.className = className;
  status.textContent = text;
}

// The answer policy the user chose: {params} to send (none: the version's own policy), or {error}
// to show instead of sending anything. A floor is a plain decimal from 0 to 1.
function chosenPolicy() {
  const field = byId("min-confidence");
  field.removeAttribute("aria-invalid");
  if (!byId("policy-custom").checked) return { params: null };
  const raw = field.value.trim();
  let error = null;
  if (raw === "") {
    error = "Type the minimum confidence (a number from 0 to 1), or choose the version's policy.";
  } else if (!/^[+-]?(\d+(\.\d*)?|\.\d+)$/.test(raw)) {
    error = `The minimum confidence "${raw}" is not a number: type one from 0 to 1, such as 0.8.`;
  } else if (!(Number(raw) >= 0 && Number(raw) <= 1)) {
    error = `The minimum confidence ${raw} is outside 0 to 1: type one from 0 to 1, such as 0.8.`;
  }
  if (error !== null) {
    field.setAttribute("aria-invalid", "true");
    return { error };
  }
  return { params: { min_confidence: Number(raw) } };
}

function showAnswer(context, r) {
  const out = byId("result");
  const status = byId("status");
  const confidence = r.confidence === null || r.confidence === undefined
    ? "not calibrated" : Number(r.confidence).toFixed(3);
  out.replaceChildren();
  if (r.abstained) {
    status.className = "abstained";
    status.textContent = `No answer: ${r.reason || "the model abstains"} (confidence ${confidence}).`;
    out.append(document.createTextNode(context));
    return;
  }
  status.className = "answered";
  status.textContent = `Answer: "${r.answer}" (confidence ${confidence} that it is exactly right).`;
  const mark = document.createElement("mark");
  mark.id = "answer";
  mark.textContent = context.slice(r.start, r.end);
  out.append(document.createTextNode(context.slice(0, r.start)), mark,
             document.createTextNode(context.slice(r.end)));
}

async function ask(event) {
  event.preventDefault();
  const context = byId("context").value;
  const question = byId("question").value;
  byId("result").replaceChildren();
  const policy = chosenPolicy();
  if (policy.error) {  // refused here: nothing is sent
    setStatus(policy.error, "error");
    byId("min-confidence").focus();
    return;
  }
  const request = { dataframe_records: [{ question, context }] };
  if (policy.params) request.params = policy.params;
  setStatus("Asking…");
  try {
    const res = await fetch("/invocations", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request),
    });
    const body = await res.json();
    if (!res.ok) {
      setStatus(`Refused (${res.status}): ${body.message || "error"}`, "error");
      return;
    }
    showAnswer(context, body.predictions[0]);
  } catch (err) {
    setStatus(`The server did not answer: ${err}`, "error");
  }
}

// The version's own floor, from /about's min_confidence: a number, or null for no policy.
function showVersionPolicy(about) {
  const floor = about.min_confidence;
  byId("policy-version-label").textContent = typeof floor === "number"
    ? `the version's policy: answer at a confidence of at least ${floor.toFixed(3)}`
    : "the version's policy: none (every answer is given)";
}

async function loadAbout() {
  const res = await fetch("/about");
  const about = await res.json();
  byId("version").textContent = `model: ${about.model}` +
    (about.precision ? `, served at ${about.precision}` : "");
  byId("card").textContent = about.card || "No model card recorded for this model.";
  showVersionPolicy(about);
}

document.addEventListener("DOMContentLoaded", () => {
  byId("ask").addEventListener("submit", ask);
  // typing a floor chooses it; choosing the version's policy clears the complaint about it
  byId("min-confidence").addEventListener("input", () => { byId("policy-custom").checked = true; });
  byId("policy-version").addEventListener("change", () => {
    byId("min-confidence").removeAttribute("aria-invalid");
  });
  loadAbout();
});
