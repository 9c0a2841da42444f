"""Every string of the contract that other programs see, in one place.

Task and queue names, event types, Redis key prefixes and on-disk names are part of
``shared/contract.md``; nothing else in haul spells them out.
"""

from __future__ import annotations

from typing import Final

# Celery tasks and their default queues (contract section 2).
TASK_PREPARE_INPUTS: Final = "haul.prepare_inputs"
TASK_STORE_OUTPUTS: Final = "haul.store_outputs"
TASK_PURGE: Final = "haul.purge"
TASK_WATCH_OUTPUTS: Final = "haul.watch_outputs"
QUEUE_INPUTS: Final = "haul.inputs"
QUEUE_OUTPUTS: Final = "haul.outputs"
QUEUE_CONTROL: Final = "haul.control"
QUEUE_WATCH: Final = "haul.watch"
TASK_QUEUES: Final = {
    TASK_PREPARE_INPUTS: QUEUE_INPUTS,
    TASK_STORE_OUTPUTS: QUEUE_OUTPUTS,
    TASK_PURGE: QUEUE_CONTROL,
    TASK_WATCH_OUTPUTS: QUEUE_WATCH,
}
ALL_QUEUES: Final = (QUEUE_INPUTS, QUEUE_OUTPUTS, QUEUE_CONTROL, QUEUE_WATCH)

# CloudEvents types (contract section 6).
EV_INPUT_DOWNLOADED: Final = "haul.input.downloaded"
EV_INPUT_CHANGED: Final = "haul.input.changed"
EV_INPUT_SKIPPED: Final = "haul.input.skipped"
EV_INPUTS_READY: Final = "haul.inputs.ready"
EV_INPUTS_FAILED: Final = "haul.inputs.failed"
EV_OUTPUT_STORED: Final = "haul.output.stored"
EV_OUTPUT_REFUSED: Final = "haul.output.refused"
EV_OUTPUTS_STORED: Final = "haul.outputs.stored"
EV_OUTPUTS_FAILED: Final = "haul.outputs.failed"
EV_DATUM_PURGED: Final = "haul.datum.purged"
EV_MESSAGE_REJECTED: Final = "haul.message.rejected"
EV_ALIAS_MOVED: Final = "haul.alias.moved"
EV_DATASET_VERSION_CREATED: Final = "haul.dataset.version.created"
EV_PROGRESS: Final = "haul.transfer.progress"
#: the outcome of one haul.purge message (the contract is silent; docs/design.md "Purge outcome")
EV_PURGE_DONE: Final = "haul.purge.done"
EVENT_SOURCE: Final = "urn:haul:worker"

# Redis keys. Everything haul keeps in Redis starts with "haul:".
KEY_CHANGE_MEMORY: Final = "haul:inputs:last"  # :<project>:<url digest>
KEY_DATUM: Final = "haul:datum"  # :<datum id> -> JSON record
KEY_PROJECT_DATUMS: Final = "haul:datums"  # :<project> -> set of datum ids
KEY_CONTENT_REFS: Final = "haul:refs"  # :<store>:<key digest> -> set of live datum ids
KEY_LEASE: Final = "haul:lease"  # :<execution id> -> holder token
KEY_INPUT_FILES: Final = "haul:inputs:files"  # :<execution> -> hash of finished input files
KEY_INPUT_LOGGED: Final = "haul:inputs:logged"  # :<execution> -> set of facts in haul.log
KEY_ALIAS: Final = "haul:alias"  # :<project>:<alias> -> sorted set of moves (by created_at)
KEY_DATASET: Final = "haul:dataset"  # :<project>:<dataset>:<version> -> hash (the header)
KEY_DATASET_NEW: Final = "haul:dataset:new"  # :<project>:<dataset>:<version> -> path -> datum
KEY_DATASET_PAGES: Final = "haul:dataset:pages"  # :<project>:<dataset>:<version> -> list
KEY_DATASET_CLAIMS: Final = "haul:datasets:claimed"  # :<project>:<execution> -> set of versions
KEY_WATCH_STOP: Final = "haul:watch:stop"  # :<execution> -> set when store_outputs began
KEY_WATCH_ACTIVE: Final = "haul:watch:active"  # :<execution> -> set while a watch may run
KEY_WATCH_ROUND: Final = "haul:watch:round"  # :<execution> -> task id of the current round
KEY_WATCH_STARTED: Final = "haul:watch:started"  # :<execution> -> epoch s of the first round
KEY_WATCH_SEEN: Final = "haul:watch:seen"  # :<execution> -> set once its folder existed
KEY_WATCH_STORED: Final = "haul:watch:stored"  # :<execution> -> rel path -> live record
KEY_WATCH_FILE_LOCK: Final = "haul:watch:file"  # :<execution>:<path digest> -> lock

# On-disk names (contract section 3).
INPUTS_DIR: Final = "inputs"
OUTPUTS_DIR: Final = "outputs"
CONFIG_DIR: Final = "config"
INPUTS_JSON: Final = "inputs.json"
HAUL_LOG: Final = "haul.log"
EXECUTIONS_DIR: Final = "executions"
PART_SUFFIX: Final = ".haul-part"
PART_RECORD_SUFFIX: Final = ".haul-part.json"
METADATA_SUFFIX: Final = ".metadata.json"

# Keys inside a store (contract section 5).
STORE_DATA_DIR: Final = "data"
STORE_DATUMS_DIR: Final = "datums"
STORE_ALIASES_DIR: Final = "aliases"
STORE_DATASETS_DIR: Final = "datasets"

# URL forms and names of section 9.
DATUM_SCHEME: Final = "datum://"
DATASET_SCHEME: Final = "dataset://"
ALIAS_PATTERN: Final = r"^[A-Za-z][A-Za-z0-9._-]{0,127}$"
DATUM_ID_PATTERN: Final = r"^[0-9a-f]{32}$"
#: members per page of a dataset version (in Redis and in the store)
DATASET_PAGE_SIZE: Final = 1000
