"""gunicorn reads this file from the working directory (scripts/start.sh, the Dockerfile).

It tells the app where it listens, so the app can warn when that is beyond loopback without
basic auth (/status and the log)."""

import os


def _addresses(cfg) -> list[str]:
    out = []
    for a in cfg.address:
        out.append(
            f"unix:{a}"
            if isinstance(a, str)
            else f"[{a[0]}]:{a[1]}"
            if ":" in str(a[0])
            else f"{a[0]}:{a[1]}"
        )
    return out


def on_starting(server):
    os.environ["ALLABEL_LISTEN"] = ",".join(_addresses(server.cfg))  # inherited by the worker


def when_ready(server):
    from alllabel.backend.orchestrator import exposure_warning

    warning = exposure_warning(
        os.environ.get("ALLABEL_LISTEN", ""), bool(os.environ.get("BASIC_AUTH_USER"))
    )
    if warning:
        server.log.warning("alllabel: %s", warning)


def worker_exit(server, worker):
    """A worker leaving (SIGTERM, or its master gone): stop the controllers and runs now, or Python
    would wait for a long pre-annotation run to finish while a new worker takes over the state."""
    import sys

    wsgi = sys.modules.get("_wsgi")
    app = getattr(wsgi, "__dict__", {}).get("app") if wsgi else None
    if app is not None:
        app.config["backend"].orchestrator.close()
