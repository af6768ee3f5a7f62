"""The try-it page of `medqa serve`, in a real headless browser (Debian's Chromium driven by
Selenium) against a real server on 127.0.0.1: a typed question gets its answer highlighted in the
passage with its confidence, a floor typed into the page's answer-policy control is sent as
``params.min_confidence`` (and one that is not a number from 0 to 1 is refused on the page, unsent),
pasted markup is shown as text and never run, the page is sent with a restrictive
Content-Security-Policy, and the API's request limits hold for it too."""

from __future__ import annotations

import json
import shutil
import threading
import urllib.request

import pytest

from helpers import CALIBRATION, DECODING, free_port, inside_project, one_version_project, wait_for

pytestmark = pytest.mark.integration

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip(
        "no chromium/chromedriver (Debian packages; .ci/run installs them)", allow_module_level=True
    )

NAME = "tiny-page"
CONTEXT = (
    "Aflibercept 8 mg can be extended to intervals of up to 16 weeks after three loading doses."
)


QUESTION = "How far can the dosing interval be extended?"


# a calibrator that says 0.5 for every answer and gives every answer (policy floor 0)
@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    """`medqa serve`'s app on a free loopback port, serving a registered tiny model: its base URL
    and the app."""
    import uvicorn

    from medqa.server import ScoringApp, describe_served, load_served_model

    proj = tmp_path_factory.mktemp("page-proj")
    with inside_project(proj):
        row = {"id": "t1", "question": "How long?", "context": CONTEXT, "answers": []}
        one_version_project(
            proj, tiny_model_dir, NAME, DECODING | {"calibration": CALIBRATION}, row
        )
        uri = f"models:/{NAME}@champion"
        app = ScoringApp(load_served_model(uri), 8, 2000, describe_served(uri))
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(app.app, host="127.0.0.1", port=port, lifespan="off")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_for(lambda: server.started or None, 60, "the page server")
        try:
            yield f"http://127.0.0.1:{port}", app
        finally:
            server.should_exit = True
            thread.join(timeout=30)


@pytest.fixture(scope="module")
def page_url(served):
    return served[0]


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def ask(browser, url: str, context: str, question: str, floor: str | None = None) -> str:
    """Type a passage and a question into the page (and ``floor`` as the answer policy's minimum
    confidence; None keeps the version's policy), submit, and wait for the status line."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url + "/")
    browser.find_element(By.ID, "context").send_keys(context)
    browser.find_element(By.ID, "question").send_keys(question)
    if floor is not None:
        browser.find_element(By.ID, "policy-custom").click()
        browser.find_element(By.ID, "min-confidence").send_keys(floor)
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 60).until(
        lambda b: b.find_element(By.ID, "status").text not in ("", "Asking…")
    )
    return browser.find_element(By.ID, "status").text


def api(url: str, records: list[dict[str, str]]) -> list[dict]:
    req = urllib.request.Request(
        url + "/invocations",
        data=json.dumps({"dataframe_records": records}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as res:
        return json.loads(res.read())["predictions"]


def test_a_typed_question_gets_its_answer_highlighted_with_its_confidence(page_url, browser):
    from selenium.webdriver.common.by import By

    status = ask(browser, page_url, CONTEXT, QUESTION)
    (served,) = api(page_url, [{"question": QUESTION, "context": CONTEXT}])
    assert not served["abstained"] and served["confidence"] == pytest.approx(0.5)
    mark = browser.find_element(By.ID, "answer")
    assert mark.text == CONTEXT[served["start"] : served["end"]].strip()
    assert status.startswith("Answer:") and "confidence 0.500" in status
    assert browser.find_element(By.ID, "result").text.strip() == CONTEXT
    assert NAME in browser.find_element(By.ID, "version").text
    card = browser.find_element(By.ID, "card").get_attribute("textContent")
    assert f"# {NAME} v1" in card and "Not medical advice" in card


def test_pasted_markup_is_shown_as_text_and_never_run(page_url, browser):
    from selenium.webdriver.common.by import By

    hostile = (
        "<script>window.pwned = 1</script> Zinc 80 mg and copper 2 mg are in the formula "
        '<img src=x onerror="window.pwned = 2"> used in AREDS2.'
    )
    ask(browser, page_url, hostile, "<b>Which</b> minerals?")
    result = browser.find_element(By.ID, "result")
    assert browser.execute_script("return window.pwned") is None
    assert "<script>" in result.text and "<img" in result.text
    assert result.find_elements(By.TAG_NAME, "img") == []
    assert result.find_elements(By.TAG_NAME, "script") == []


def test_the_page_is_sent_with_a_restrictive_policy(page_url):
    with urllib.request.urlopen(page_url + "/", timeout=30) as res:
        csp = res.headers["Content-Security-Policy"]
        assert res.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp


def test_the_api_limits_hold_for_the_page(page_url, browser):
    status = ask(browser, page_url, "AMD " * 600, "What is AMD?")  # over the 2,000-character limit
    assert status.startswith("Refused (413)") and "2000" in status


def invocations_sent(browser) -> int:
    """How many requests the page has sent to /invocations since it loaded (resource timing)."""
    return browser.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter(e => new URL(e.name).pathname === '/invocations').length"
    )


def test_a_strict_floor_withholds_an_answer_the_versions_policy_gives(page_url, browser):
    from selenium.webdriver.common.by import By

    assert ask(browser, page_url, CONTEXT, QUESTION).startswith("Answer:")
    assert browser.find_element(By.ID, "policy-version").is_selected()
    label = browser.find_element(By.ID, "policy-version-label").text  # /about gives the floor
    assert "the version's policy: answer at a confidence of at least 0.000" in label

    status = ask(browser, page_url, CONTEXT, QUESTION, floor="0.99")
    assert status == (
        "No answer: confidence 0.500 is below the answer policy's 0.990 (confidence 0.500)."
    )
    assert browser.find_elements(By.ID, "answer") == []
    assert browser.find_element(By.ID, "result").text.strip() == CONTEXT
    assert invocations_sent(browser) == 1

    assert ask(browser, page_url, CONTEXT, QUESTION, floor="0.5").startswith("Answer:")


def test_a_floor_that_is_not_a_number_from_0_to_1_is_refused_on_the_page_and_not_sent(
    page_url, browser
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page_url + "/")
    browser.find_element(By.ID, "context").send_keys(CONTEXT)
    browser.find_element(By.ID, "question").send_keys(QUESTION)
    field = browser.find_element(By.ID, "min-confidence")
    status = browser.find_element(By.ID, "status")
    for typed, why in [
        ("abc", 'The minimum confidence "abc" is not a number'),
        ("0,8", 'The minimum confidence "0,8" is not a number'),
        ("1.5", "The minimum confidence 1.5 is outside 0 to 1"),
        ("-0.1", "The minimum confidence -0.1 is outside 0 to 1"),
        ("", "Type the minimum confidence (a number from 0 to 1)"),
    ]:
        browser.find_element(By.ID, "policy-custom").click()
        field.clear()
        field.send_keys(typed)
        browser.find_element(By.ID, "submit").click()
        WebDriverWait(browser, 10).until(lambda b, why=why: status.text.startswith(why))
        assert status.get_attribute("class") == "error"
        assert field.get_attribute("aria-invalid") == "true"
        assert browser.find_element(By.ID, "result").text == ""
    # a valid floor is then sent, and it is the only request the page made
    field.clear()
    field.send_keys("0.25")
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 60).until(lambda b: status.text.startswith("Answer:"))
    assert field.get_attribute("aria-invalid") is None
    assert invocations_sent(browser) == 1


def test_the_servers_refusal_of_a_floor_is_shown_as_the_error(served, browser):
    """A version evaluated without a calibrator cannot take a floor: the server's 400 says why."""
    url, app = served
    calibrator, app.predictor.calibrator = app.predictor.calibrator, None
    try:
        status = ask(browser, url, CONTEXT, QUESTION, floor="0.5")
    finally:
        app.predictor.calibrator = calibrator
    assert status.startswith("Refused (400): min_confidence needs a calibrated confidence")
