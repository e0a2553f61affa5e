// The channel states of saved_state.proto's Channel.state.
#ifndef CVMBUS_PARAVISOR_SERVER_SAVED_CODES_H_
#define CVMBUS_PARAVISOR_SERVER_SAVED_CODES_H_

#include <cstdint>

namespace cvmbus::paravisor {

inline constexpr uint32_t kSavedClosed = 0;
inline constexpr uint32_t kSavedOpening = 1;
inline constexpr uint32_t kSavedOpen = 2;
inline constexpr uint32_t kSavedClosing = 3;
inline constexpr uint32_t kSavedReleased = 4;

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_SERVER_SAVED_CODES_H_
