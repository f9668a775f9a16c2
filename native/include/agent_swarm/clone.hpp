// Copy-on-write file cloning with a hole-preserving fallback copy.
#pragma once

#include <string>

namespace agent_swarm {

enum class CloneMode { Auto, Reflink, Copy };
enum class CloneMethod { Reflink, Copy };

// Clone `src` to `dst`.
//  * Auto:    reflink (FICLONE / clonefile / FSCTL_DUPLICATE_EXTENTS_TO_FILE) when the
//             filesystem supports it, else a sparse-preserving copy.
//  * Reflink: reflink or fail with PathError(EOPNOTSUPP / EXDEV ...).
//  * Copy:    always the sparse-preserving copy.
// The data is written to a temporary file next to `dst` and renamed into place, so `dst`
// is never left partial. If `dst` exists and `overwrite` is false -> PathError(EEXIST).
// `src` must be a regular file (directory -> PathError(EISDIR)). File mode is preserved.
CloneMethod clone_file(const std::string& src, const std::string& dst, CloneMode mode,
                       bool overwrite);

}  // namespace agent_swarm
