# -*- coding: utf-8 -*-
"""The counter's pure parsers and argument checks on captured kernel bytes (cases in parsing_cases.py)."""

import pytest

import parsing_cases


@pytest.mark.parametrize('function', [function for _name, function in parsing_cases.CASES],
                         ids=[name for name, _function in parsing_cases.CASES])
def test_case(function):
    function()
