"""The status page at GET /: /status's figures as HTML, escaped, behind the same credentials."""

import base64
from html.parser import HTMLParser

from alllabel.backend.controller import ProjectController, Services
from alllabel.backend.ls_client import LabelStudioError
from alllabel.backend.page import IDLE_REFRESH, RUN_REFRESH, render
from alllabel.backend.status import LAST_ERRORS, project_status, with_rate
from tests.test_security import make

NER = '<View><Labels name="label" toName="text"><Label value="A"/></Labels><Text name="text" value="$text"/></View>'
EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'


class Figures(HTMLParser):
    """The page's tagged figures (data-k -> text) and every tag it has."""

    def __init__(self, page: str):
        super().__init__()
        self.figures, self.tags, self._key = {}, [], None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._key = dict(attrs).get("data-k")

    def handle_data(self, data):
        if self._key:
            self.figures[self._key] = self.figures.get(self._key, "") + data

    def handle_endtag(self, tag):
        self._key = None


def status(phase="prelabeling", **run) -> dict:
    project = {
        "project": 7,
        "phase": phase,
        "message": EVIL,
        "total_tasks": 120,
        "budget": 10,
        "annotated_tasks": 12,
        "annotated_from_queue": 9,
        "unconfirmed_claims": 1,
        "queue": {"selected": 15, "pushed": 15, "reserve": 5},
        "prelabels": {"done": 40, "failed": 2, "pushed": 38},
        "skipped_tasks": 0,
        "detached": False,
        "warnings": [f"the labeling config also has {EVIL}"],
        "errors": [{"at": None, "task": 3, "error": EVIL}],
        "run": {
            "spent_usd": 0.0123,
            "cap_usd": 0.05,
            "hold": "held: the cost cap " + EVIL,
            "hold_kind": "cost_cap",
            "estimate": {"tasks": 108, "prompt_tokens": 9000, "completion_tokens": 700},
            "progress": {
                "total": 108,
                "done": 40,
                "failed": 2,
                "rate_per_min": 12.5,
                "seconds_left": 300,
            },
            "quality": {
                "k": 3,
                "f1": 0.8,
                "per_label": {EVIL: {"precision": 1, "f1": 0.5}},
                "choices": {
                    "mood": {"accuracy": 0.75, "macro_f1": 0.6, "per_class": {EVIL: {"f1": 0.4}}}
                },
            },
            **run,
        },
    }
    return {"model_version": "m1", "annotator": "llm", "projects": [project]}


def test_the_page_shows_the_status_figures_and_escapes_everything_users_wrote():
    page = render(status(), now=0)
    seen = Figures(page)
    assert "script" not in seen.tags and "img" not in seen.tags  # escaped, not markup
    assert page.count("&lt;script&gt;") >= 5  # message, warning, error, hold, label: all shown
    f = seen.figures
    assert f["annotated_tasks"] == "12" and f["budget"] == "10"
    assert f["annotated_from_queue"] == "9" and f["annotated_outside_queue"] == "3"
    assert f["queue.reserve"] == "5" and f["run.estimate.tasks"] == "108"
    assert f["run.spent_usd"] == "US$0.0123" and f["run.cap_usd"] == "US$0.0500"
    assert f["run.progress.rate_per_min"] == "12.5" and f["run.progress.done"] == "40"
    assert f[f"run.quality.per_label.{EVIL}.f1"] == "50.0"
    assert f["run.quality.choices.mood.accuracy"] == "75.0"
    assert f["run.quality.choices.mood.macro_f1"] == "60.0"
    assert f[f"run.quality.choices.mood.per_class.{EVIL}.f1"] == "40.0"
    assert "Raise ALLABEL_MAX_COST_USD" in page  # what to do about the hold
    assert f["run.progress.seconds_left"] == "held, so no time"  # not at its rate
    unheld = status(hold=None, hold_kind=None)
    assert Figures(render(unheld, now=0)).figures["run.progress.seconds_left"] == "5m 00s"
    assert f'content="{RUN_REFRESH}"' in page
    assert f'content="{IDLE_REFRESH}"' in render(status(phase="done"), now=0)


def test_rate_and_time_left_follow_the_finished_tasks():
    p = {"total": 100, "done": 18, "failed": 2, "started": 1000.0}
    assert with_rate(p, 1060.0) | {} == {**p, "rate_per_min": 20.0, "seconds_left": 240}
    assert with_rate({**p, "done": 0, "failed": 0}, 1060.0)["seconds_left"] is None
    assert with_rate({**p, "done": 98}, 1060.0)["seconds_left"] == 0


def test_the_controller_keeps_the_last_errors_for_status(tmp_path):
    backend, _ = make(tmp_path)
    orch = backend.orchestrator
    orch.state.register(5, NER)
    c = ProjectController(
        5,
        orch.state,
        orch.settings,
        Services(ls=None, annotator=None, annotator_name=str),
        start=False,
    )
    for i in range(LAST_ERRORS + 2):
        c._failed(LabelStudioError(f"failure {i}", kind="unreachable"))
    errors = project_status(orch.state, 5, c)["errors"]
    assert [e["error"].split(" (")[0] for e in errors] == [
        f"failure {i}" for i in reversed(range(2, LAST_ERRORS + 2))
    ]


def test_the_page_is_html_behind_the_same_credentials(tmp_path):
    backend, client = make(tmp_path / "b", basic_auth_user="ls", basic_auth_pass="s3cret")
    backend.orchestrator.state.register(5, NER)
    assert client.get("/").status_code == 401
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret").decode()}
    r = client.get("/", headers=good)
    assert r.status_code == 200 and r.mimetype == "text/html"
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    figures = Figures(r.get_data(as_text=True)).figures
    st = client.get("/status", headers=good).json["projects"][0]
    assert figures["phase"] == st["phase"] and figures["annotated_tasks"] == str(
        st["annotated_tasks"]
    )
    assert client.get("/health", headers=good).json["status"] == "UP"


def test_the_page_says_whether_label_studio_serves_the_allabel_order_yet():
    st = status()
    p = st["projects"][0]
    p["order"] = {"since": None, "annotated_before": 2}
    page = render(st, now=0)
    assert "does not serve the ALLabel order yet" in page
    assert Figures(page).figures["order.annotated_before"] == "2"
    p["order"] = {"since": 1_700_000_000.0, "annotated_before": 3}
    page = render(st, now=0)
    assert "serves the ALLabel order since" in page and "not ALLabel picks" in page
    assert Figures(page).figures["order.annotated_before"] == "3"
    assert Figures(page).figures["order.since"].startswith("2023-11-1")
