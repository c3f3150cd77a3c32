// The spkv-studio tests run without a physical display: Qt's offscreen platform unless QT_QPA_PLATFORM says
// otherwise (e.g. xcb under xvfb-run). Settings (recent files) go to a test location.
#include <gtest/gtest.h>

#include <QApplication>
#include <QStandardPaths>
#include <cstdlib>

int main(int argc, char** argv) {
  if (!std::getenv("QT_QPA_PLATFORM")) setenv("QT_QPA_PLATFORM", "offscreen", 1);
  QStandardPaths::setTestModeEnabled(true);
  QApplication app(argc, argv);
  QApplication::setOrganizationName("spkv-tests");
  QApplication::setApplicationName("spkv-studio-tests");
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
