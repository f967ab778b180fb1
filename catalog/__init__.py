"""The data contracts every other package builds on: items, interest clusters and their vocabulary, member
histories and history keys, every table's pyarrow schema, the readers and writers of tables and logs,
the MovieLens-100K loader and the synthetic world generator. Imports nothing of ours; loads numpy and
pyarrow only.

Public API:
    Catalog, CatalogConfig, build_movielens_catalog   the MovieLens-100K catalog: build, save, load
    CATALOG_FILES, catalog_summary_lines              a catalog folder's files; its summary, as jobs print it
    TaxonomyConfig                                    how items are grouped into clusters
    SyntheticConfig, generate_world                   a synthetic world of any size, written in chunks
    ClusterVocabulary, history_text                   cluster ids <-> names and descriptions, as LLMs see them
    history_keys                                      members' last-K cluster keys
    schemas                                           every table's schema (catalog.schemas.TABLES)
    read_table, write_table, write_json,              tables checked against their schema; a folder built
    staging_folder, replace_folder                    beside its place and swapped in whole
    SchemaMismatchError, DataNotFoundError            what a wrong table or a missing data package raises
    check_output_folder                               the --out guard: never replace someone else's files
    FeedbackLogWriter, ImpressionLogWriter,           feedback, impression and engagement-event logs
    EventLogWriter, read_feedback_log,                (parquet parts)
    read_impression_log, read_event_log
    join_feedback, JOIN_REASONS                       impression log + engagement events -> feedback log
    FeedbackRules, read_feedback,                     feedback validation: bad rows quarantined and counted
    feedback_summary_line, log_parts
"""

from catalog import schemas
from catalog.build import (
    CATALOG_FILES,
    Catalog,
    CatalogConfig,
    build_movielens_catalog,
    catalog_summary_lines,
)
from catalog.feedback import FeedbackRules, feedback_summary_line, read_feedback
from catalog.histories import history_keys
from catalog.io import (
    SchemaMismatchError,
    read_table,
    replace_folder,
    staging_folder,
    write_json,
    write_table,
)
from catalog.join import REASONS as JOIN_REASONS
from catalog.join import join_feedback
from catalog.logs import (
    EventLogWriter,
    FeedbackLogWriter,
    ImpressionLogWriter,
    log_parts,
    read_event_log,
    read_feedback_log,
    read_impression_log,
)
from catalog.movielens import DataNotFoundError, load_movielens_100k
from catalog.outputs import check_output_folder
from catalog.synthetic import SyntheticConfig, generate_world
from catalog.taxonomy import TaxonomyConfig
from catalog.vocabulary import ClusterVocabulary, history_text

__all__ = [
    "CATALOG_FILES", "EventLogWriter", "JOIN_REASONS", "join_feedback", "read_event_log", "catalog_summary_lines", "feedback_summary_line", "log_parts",
    "Catalog", "CatalogConfig", "ClusterVocabulary", "DataNotFoundError", "FeedbackLogWriter", "FeedbackRules",
    "ImpressionLogWriter", "SchemaMismatchError", "SyntheticConfig", "TaxonomyConfig", "build_movielens_catalog",
    "check_output_folder", "generate_world", "history_keys", "history_text", "read_feedback", "read_feedback_log",
    "read_impression_log", "read_table", "replace_folder", "schemas", "staging_folder", "write_json",
    "write_table", "load_movielens_100k",
]  # fmt: skip
