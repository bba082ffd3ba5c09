"""The simulation harness: production cores, fake world, virtual time.

Theory of operation
-------------------
``fsm-agent simulate`` runs the *same* ``WrapperCore`` and ``SessionCore`` as ``fsm-agent serve``
and ``fsm-agent control``; only the body around them is fake. Each fake (``agent`` for Kilo,
``runtime`` for the container runtime, ``channel`` for the ingest WebSocket, ``store`` for SQLite)
implements what its real adapter does, including the ways it fails, and schedules everything on one
``VirtualClock``, so a two-hour scenario takes milliseconds and every run with the same seed is the
same run, down to the byte of its timeline.

* ``scenario`` — TOML scenario files decoded into typed structs (errors name file, line, field);
* ``world`` — one control plane and its containers, wired as the real hosts wire their cores;
* ``invariants`` — what must hold after every step of any run (scripted, fuzzed or explored);
* ``run`` / ``expect`` / ``timeline`` — play a scenario, judge it, print what happened;
* ``fuzz`` — random fault schedules with shrinking; ``explore`` — exhaustive bounded search;
* ``fleet`` — many sessions for hours, cut into worlds run side by side and merged exactly;
  ``report`` — the fleet picture (HTML/SVG); ``bench`` — throughput figures and the census.
"""
