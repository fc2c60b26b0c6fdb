"""Hypothesis-generated settings: the solver either accepts them or refuses them with a
ValueError naming the setting, never any other exception."""
import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptypy_npu.simulate import simulate_scan
from ptypy_npu.solver import GroupSettings, JointSolver, SolverSettings

DATA, _ = simulate_scan(frame_size=32, count=12, photons=1e5)
SETTING_NAMES = ('batch_size', 'loss', 'consistency', 'network_start', 'probe_update_start',
                 'illumination_regularisation', 'hessian_interval', 'max_divergences', 'seed', 'device',
                 'precision')

anything = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.floats(allow_nan=True),
                     st.text(max_size=6), st.sampled_from(['gaussian', 'poisson', 'CPU', 'GPU', 'adam', 'lion', 'float16',
                                                       'bfloat16']))
optimizer_names = st.sampled_from(['adam', 'adamw', 'sgd', 'lion', 'adahessian', 'nosuch'])
groups = st.builds(GroupSettings, optimizer_names, anything,
                   st.dictionaries(st.sampled_from(['betas', 'weight_decay', 'momentum', 'eps', 'nosuch']),
                                   st.one_of(anything, st.tuples(anything, anything)), max_size=2))
networks = st.one_of(st.none(), st.fixed_dictionaries(
    {'name': st.sampled_from(['W1Net', 'NoSuchNet'])},
    optional={'depth': anything, 'width': anything, 'binning': anything, 'nosuch': anything}))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(st.sampled_from(SETTING_NAMES), anything, max_size=4),
       group_changes=st.dictionaries(st.sampled_from(['network_group', 'object_group', 'probe_group']), groups,
                                     max_size=2),
       network=networks)
def test_any_settings_are_accepted_or_refused_with_a_value_error(changes, group_changes, network):
    chosen = dataclasses.replace(SolverSettings(network=network), **changes, **group_changes)
    try:
        JointSolver(DATA, chosen)
    except ValueError as error:
        assert str(error)  # every refusal explains itself
    except Exception as error:  # noqa: BLE001 - the point of the test
        pytest.fail(f"{type(error).__name__} instead of ValueError for {chosen}: {error}")
