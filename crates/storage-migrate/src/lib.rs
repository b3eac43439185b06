//! Legacy import (filled in by the migration work).
