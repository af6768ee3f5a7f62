// The try-it page of `medqa serve`: posts the pasted passage and question to /invocations (the API,
// with its limits) and shows the answer highlighted in the passage. Everything the user pasted or
// the model returned is inserted as text nodes, never parsed as markup.
"use strict";

const byId = (id) => document.getElementById(id);

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
  byId("status").textContent = "Asking…";
  byId("result").replaceChildren();
  try {
    const res = await fetch("/invocations", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ dataframe_records: [{ question, context }] }),
    });
    const body = await res.json();
    if (!res.ok) {
      byId("status").textContent = `Refused (${res.status}): ${body.message || "error"}`;
      return;
    }
    showAnswer(context, body.predictions[0]);
  } catch (err) {
    byId("status").textContent = `The server did not answer: ${err}`;
  }
}

async function loadAbout() {
  const res = await fetch("/about");
  const about = await res.json();
  byId("version").textContent = `model: ${about.model}` +
    (about.precision ? `, served at ${about.precision}` : "");
  byId("card").textContent = about.card || "No model card recorded for this model.";
}

document.addEventListener("DOMContentLoaded", () => {
  byId("ask").addEventListener("submit", ask);
  loadAbout();
});
