"""Hypothesis-generated settings: the solver either accepts them or refuses them with a
ValueError naming the setting, never any other exception."""
import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings
from hypothesis import strategies as st

from ptypy_npu import settings
from ptypy_npu.plugins import build_solver
from ptypy_npu.simulate import simulate_scan

DATA, _ = simulate_scan(frame_size=32, count=12, photons=1e5)
KEYS = [key for key, _, _ in settings.walk(settings.Settings())]

anything = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.floats(allow_nan=True),
                     st.text(max_size=6), st.sampled_from(['gaussian', 'poisson', 'CPU', 'GPU', 'adam', 'lion', 'sgd',
                                                           'adahessian', 'float16', 'bfloat16', 'W1Network',
                                                           'NoSuchNet', 'illumination', 'gauss_newton']))
options = st.dictionaries(st.sampled_from(['betas', 'weight_decay', 'momentum', 'eps', 'curvature', 'lazy', 'nosuch']),
                          st.one_of(anything, st.tuples(anything, anything)), max_size=2)


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(st.sampled_from(KEYS), anything, max_size=4),
       group_options=st.dictionaries(st.sampled_from(['network_update', 'object_update', 'probe_update']), options,
                                     max_size=2))
def test_any_settings_are_accepted_or_refused_naming_the_setting(changes, group_options):
    chosen = settings.make(changes)
    for group, group_settings in group_options.items():
        getattr(chosen, group).options = group_settings
    try:
        build_solver(DATA, chosen)
    except ValueError as error:
        named = [key for key in KEYS + [f"{g}.options" for g in group_options] if key in str(error)]
        assert named, f"the refusal names no setting: {error}"
    except Exception as error:  # noqa: BLE001 - the point of the test
        pytest.fail(f"{type(error).__name__} instead of ValueError for {changes}, {group_options}: {error}")
