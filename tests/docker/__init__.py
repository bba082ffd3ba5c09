"""Tests on real containers (the wrapper image, which ``just setup`` builds); without a Docker
daemon they skip with a one-line reason, and fail under ``FSM_AGENT_REQUIRE_DOCKER=1`` (CI)."""
