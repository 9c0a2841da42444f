"""listing index on project and warning

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # "With warnings" inside one project: without it the (has_warning, seq) index is walked
    # and every other project's warned rows are skipped (all of them, for a project with none).
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_executions_project_warning_seq", ["project_id", "has_warning", "seq"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.drop_index("ix_executions_project_warning_seq")
