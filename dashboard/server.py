"""The dashboard as an ASGI app: dashboard/app.py behind the Host and Origin checks of
dashboard/guard.py. `pulse dashboard` runs it (`streamlit run dashboard/server.py`);
PULSE_DASHBOARD_ALLOWED_HOSTS (comma-separated, set by `pulse dashboard`) names the hosts.

    PULSE_DASHBOARD_ALLOWED_HOSTS=localhost,127.0.0.1 streamlit run dashboard/server.py
"""
import os

import streamlit as st
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from dashboard.guard import LOOPBACK_NAMES, OriginGuard

APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app.py")
HOSTS = [h for h in os.environ.get("PULSE_DASHBOARD_ALLOWED_HOSTS", ",".join(LOOPBACK_NAMES)).split(",") if h]

app = st.App(APP, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=HOSTS), Middleware(OriginGuard)])
