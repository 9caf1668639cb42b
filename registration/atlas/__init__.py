"""Population atlases: an unbiased template and one geodesic per subject (THEORY §9), on Dask.

``build_template(subjects)`` alternates (i) registering the template to every subject (``register_images`` or
``register_shapes``, one task per subject on a Dask cluster: a LocalCluster by default, any scheduler by address),
(ii) the template update (images: Jacobian-weighted mean; shapes: a gradient step of the template's vertices on the
summed data terms) and (iii) unbiasing (shooting the template along the mean of the subjects'
initial momenta at the template); checkpoints after every round make a run resumable, a task lost with its worker
is rescheduled, and a subject whose data fail is reported by name and excluded (or stops the run).
"""

from ._build import build_template
from ._executor import WORKER_PRELOAD, local_cluster
from ._result import AtlasResult, RoundRecord, SubjectSummary
from ._run import SubjectExcludedWarning
from ._shapes import is_shape_source

__all__ = ["build_template", "AtlasResult", "RoundRecord", "SubjectSummary", "SubjectExcludedWarning",
           "is_shape_source", "WORKER_PRELOAD", "local_cluster"]
