// CRC-32C (Castagnoli: reflected polynomial 0x82F63B78, initial value and final xor 0xFFFFFFFF;
// "123456789" gives 0xE3069283), the checksum of saved sequences. crc32c uses the processor's CRC
// instruction where it has one (x86 SSE4.2, chosen at run time; arm64 built with the CRC
// extension) and crc32cPortable otherwise; both give the same value.
#pragma once
#include <cstddef>
#include <cstdint>

namespace lukv {

uint32_t crc32c(const uint8_t* data, size_t n);
uint32_t crc32cPortable(const uint8_t* data, size_t n);

}  // namespace lukv
