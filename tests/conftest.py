# -*- coding: utf-8 -*-
"""The counter's tests (pytest tests/unit tests/integration): the shared module under test is importable as
tcp_status_counter, as the role's module_utils."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'roles', 'zabbix_tcp_status', 'module_utils'))
